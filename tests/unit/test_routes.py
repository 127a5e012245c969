"""The routes config builder and its loader (pure; plus one run on the demo registry)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from fleet.cli import main
from fleet.errors import RoutesConfigError, SpecError
from fleet.resolved import ResolvedModel
from fleet.router.config import RouterLimits, load_routes_config, parse_routes_config
from fleet.routes import build_routes_config
from fleet.schema import Column
from fleet.spec import Fleet
from fleet.specfile import parse_fleet

FLEET_YAML = """
models:
  - {name: m_a, version: 1, endpoint: p, parameters: [2, TAXI, a]}
  - {name: m_b, alias: champion, endpoint: p, parameters: [2, TAXI, b]}
  - {name: m_c, version: 3, endpoint: q}
experiments:
  - route: /p/2/TAXI
    sticky_header: X-Caller-Id
    variants: [{model: m_a, weight: 60}, {model: m_b, weight: 40}]
"""


def _resolved(fleet: Fleet) -> list[ResolvedModel]:
    cols = [Column("x", "double"), Column("n", "long", required=False)]
    return [
        ResolvedModel(
            model=m,
            version=m.version or 7,
            model_uri=f"models:/{m.name}/1",
            run_id="r",
            source="s",
            inputs=cols,
        )
        for m in fleet.resolved_models()
    ]


def _url(r: ResolvedModel) -> str:
    return f"http://{r.model.k8s_name}:3000/"


def test_build_routes_config_shape() -> None:
    fleet = parse_fleet(FLEET_YAML)
    config = build_routes_config(fleet, _resolved(fleet), _url)
    json.dumps(config)  # serialisable as is
    assert config["version"] == 1
    assert config["limits"] == {
        "max_batch": 1000,
        "max_body_bytes": 1048576,
        "timeout_s": 5.0,
        "backend_calls": 2,
        "client_connections": 4096,
        "header_bytes": 16384,
        "header_count": 100,
        "header_timeout_s": 10.0,
        "body_timeout_s": 10.0,
        "buffered_body_bytes": 33554432,
        "pipelined": 8,
        "shadow_calls": 4,
    }
    first = config["routes"][0]
    assert first["path"] == "/p/2/TAXI/a"
    assert first["model"] == "m_a"
    assert first["version"] == 1
    assert first["backend"].startswith("http://m-a-") and not first["backend"].endswith("/")
    assert first["inputs"] == [
        {"name": "x", "type": "double", "required": True},
        {"name": "n", "type": "long", "required": False},
    ]
    assert [r["version"] for r in config["routes"]] == [1, 7, 3]
    assert config["experiments"] == [
        {
            "path": "/p/2/TAXI",
            "sticky_header": "X-Caller-Id",
            "variants": [{"model": "m_a", "weight": 60}, {"model": "m_b", "weight": 40}],
        }
    ]


def test_limits_flow_into_routes() -> None:
    fleet = parse_fleet(FLEET_YAML)
    limits = RouterLimits(max_batch=10, max_body_bytes=4096, timeout_s=0.5)
    config = build_routes_config(fleet, _resolved(fleet), _url, limits=limits)
    assert config["limits"]["max_batch"] == 10
    assert {r["timeout_s"] for r in config["routes"]} == {0.5}


def test_experiment_dropped_when_a_variant_is_not_resolved() -> None:
    fleet = parse_fleet(FLEET_YAML)
    resolved = [r for r in _resolved(fleet) if r.name != "m_b"]
    config = build_routes_config(fleet, resolved, _url)
    assert config["experiments"] == []
    assert [r["model"] for r in config["routes"]] == ["m_a", "m_c"]


SHUFFLE_YAML = """
models:
  - {name: p_1_a, version: 1, endpoint: p, parameters: [1, a]}
  - {name: p_1_b, version: 2, endpoint: p, parameters: [1, b]}
  - {name: p_1_c, version: 1, endpoint: p, parameters: [1, c]}
  - {name: p_2_a, version: 4, endpoint: p, parameters: [2, a]}
  - {name: p_2_b, version: 1, endpoint: p, parameters: [2, b]}
  - {name: q_1, alias: champion, endpoint: q, parameters: [1]}
  - {name: q_2, version: 3, endpoint: q, parameters: [2]}
experiments:
  - route: /p/2
    variants: [{model: p_2_b, weight: 90}, {model: p_2_a, weight: 10}]
  - route: /p/1
    sticky_header: X-Caller-Id
    variants:
      - {model: p_1_c, weight: 20}
      - {model: p_1_a, weight: 50}
      - {model: p_1_b, weight: 30}
  - route: /q
    variants: [{model: q_2, weight: 50}, {model: q_1, weight: 50}]
"""


def _shuffled(text: str, seed: int) -> str:
    """The same fleet with models, experiments and every experiment's variants reordered."""
    doc = yaml.safe_load(text)
    rng = random.Random(seed)
    rng.shuffle(doc["models"])
    rng.shuffle(doc["experiments"])
    for e in doc["experiments"]:
        rng.shuffle(e["variants"])
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.mark.parametrize("seed", range(5))
def test_reordering_models_yaml_changes_nothing(seed: int) -> None:
    fleet = parse_fleet(SHUFFLE_YAML)
    want = build_routes_config(fleet, _resolved(fleet), _url)
    moved_text = _shuffled(SHUFFLE_YAML, seed)
    assert moved_text != yaml.safe_dump(yaml.safe_load(SHUFFLE_YAML), sort_keys=False)
    moved = parse_fleet(moved_text)
    resolved = _resolved(moved)
    random.Random(seed).shuffle(resolved)  # whatever order the registry answers in
    got = build_routes_config(moved, resolved, _url)
    assert got == want
    assert json.dumps(got) == json.dumps(want)  # the very bytes, key order included
    # Sorted by path, variants by model: the order the router reads them in.
    assert [r["path"] for r in got["routes"]] == sorted(r["path"] for r in got["routes"])
    assert [e["path"] for e in got["experiments"]] == ["/p/1", "/p/2", "/q"]
    assert [v["model"] for v in got["experiments"][0]["variants"]] == ["p_1_a", "p_1_b", "p_1_c"]


def test_loader_roundtrip(tmp_path: Path) -> None:
    fleet = parse_fleet(FLEET_YAML)
    config = build_routes_config(fleet, _resolved(fleet), _url)
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(config))
    loaded = load_routes_config(path)
    assert loaded.route_for("m_b").path == "/p/2/TAXI/b"
    assert loaded.experiments[0].variants[1].weight == 40
    assert loaded.routes[0].columns()[1] == Column("n", "long", required=False)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c["routes"][0].update(typo=1), "routes.0.typo"),
        (lambda c: c["routes"][0].update(backend="ftp://x"), "routes.0.backend"),
        (lambda c: c["routes"][0]["inputs"][0].update(type="complex"), "routes.0.inputs.0.type"),
        (lambda c: c["experiments"][0]["variants"][0].update(weight=10), "sum to 50, not 100"),
        (lambda c: c["experiments"][0]["variants"][0].update(model="nope"), "nope"),
        (lambda c: c["routes"][1].update(path="/p/2/TAXI/a"), "served twice: /p/2/TAXI/a"),
        (lambda c: c.update(version=2), "version"),
        (lambda c: c["limits"].update(max_batch=0), "limits.max_batch"),
    ],
)
def test_loader_names_the_bad_field(mutate, needle: str) -> None:
    fleet = parse_fleet(FLEET_YAML)
    config = build_routes_config(fleet, _resolved(fleet), _url)
    mutate(config)
    with pytest.raises(RoutesConfigError, match=needle.replace(".", r"\.")):
        parse_routes_config(config)


def test_loader_reports_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "routes.json"
    bad.write_text("{not json")
    with pytest.raises(RoutesConfigError, match=r"routes\.json"):
        load_routes_config(bad)


def test_fleet_routes_command_on_demo_registry(
    demo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(__file__).resolve().parents[2]
    code = main(
        [
            "routes",
            "--models",
            str(root / "models.yaml"),
            "--tracking-uri",
            demo_uri,
            "--backend-template",
            "http://127.0.0.1:9/{name}",
            "--timeout",
            "2.5",
        ]
    )
    assert code == 0
    config = json.loads(capsys.readouterr().out)
    loaded = parse_routes_config(config)
    paths = {r.path for r in loaded.routes}
    assert "/probability/2/TAXI/trafficaware" in paths and "/demand/2" in paths
    assert loaded.experiments[0].path == "/probability/2/TAXI"
    demand = loaded.route_for("demand_forecast_1")
    assert demand.backend == "http://127.0.0.1:9/demand_forecast_1"
    assert demand.timeout_s == 2.5
    assert [(c.name, c.type) for c in demand.inputs] == [
        ("hour_of_week", "long"),
        ("temperature", "double"),
        ("holiday", "boolean"),
    ]


SHADOWED = """
models:
  - {name: m_a, version: 1, endpoint: p, parameters: [a], shadow: {model: m_c, percent: 12.5}}
  - {name: m_b, version: 1, endpoint: p, parameters: [b]}
  - name: m_c
    version: 2
    endpoint: p
    parameters: [c]
experiments:
  - route: /p/ab
    variants: [{model: m_a, weight: 50}, {model: m_b, weight: 50}]
    shadow:
      model: m_c
      percent: 100
"""


def _with_inputs(fleet: Fleet, inputs: dict[str, list[Column]]) -> list[ResolvedModel]:
    return [
        ResolvedModel(m.model, m.version, m.model_uri, m.run_id, m.source, inputs.get(m.name, []))
        for m in _resolved(fleet)
    ]


def test_shadows_reach_the_routes_config() -> None:
    fleet = parse_fleet(SHADOWED)
    config = build_routes_config(fleet, _resolved(fleet), _url)
    routes = {r["path"]: r for r in config["routes"]}
    assert routes["/p/a"]["shadow"] == {"model": "m_c", "percent": 12.5}
    assert "shadow" not in routes["/p/b"] and "shadow" not in routes["/p/c"]
    (exp,) = config["experiments"]
    assert exp["shadow"] == {"model": "m_c", "percent": 100}
    # The router loads it: the shadow model has a route of its own.
    assert parse_routes_config(config).routes[0].shadow is not None


def test_a_shadow_left_out_of_the_config_is_dropped_not_an_error() -> None:
    fleet = parse_fleet(SHADOWED)
    without = [r for r in _resolved(fleet) if r.name != "m_c"]
    config = build_routes_config(fleet, without, _url)
    assert all("shadow" not in r for r in config["routes"] + config["experiments"])
    cut = fleet.only(["m_a", "m_b"])
    assert cut.shadows() == {}


def test_a_shadow_that_cannot_take_the_routes_records_is_refused_with_its_line() -> None:
    fleet = parse_fleet(SHADOWED)
    narrow = [Column("x", "double")]
    wants_more = [Column("x", "double"), Column("z", "string")]  # z: the route has none
    other_type = [Column("x", "long")]
    resolved = _with_inputs(fleet, {"m_a": narrow, "m_b": narrow, "m_c": wants_more})
    with pytest.raises(SpecError) as err:
        build_routes_config(fleet, resolved, _url)
    assert err.value.problems == [
        "models.yaml: line 3: model 'm_a': shadow.model: 'm_c' cannot take the route's "
        "records: needs column 'z', which the route's records lack",
        "models.yaml: line 13: experiment '/p/ab': shadow.model: 'm_c' cannot take the "
        "route's records: needs column 'z', which the route's records lack",
    ]
    resolved = _with_inputs(fleet, {"m_a": narrow, "m_b": narrow, "m_c": other_type})
    with pytest.raises(SpecError, match="column 'x' is long, the route's is double"):
        build_routes_config(fleet, resolved, _url)
    # Fewer columns, or a wider type, is fine: the shadow gets the columns it takes.
    ints = [Column("x", "integer"), Column("y", "float", required=False)]
    resolved = _with_inputs(fleet, {"m_a": ints, "m_b": ints, "m_c": [Column("x", "long")]})
    assert build_routes_config(fleet, resolved, _url)["routes"][0]["shadow"]


def test_shadow_config_errors_name_the_path() -> None:
    fleet = parse_fleet(SHADOWED)
    config = build_routes_config(fleet, _resolved(fleet), _url)
    config["routes"][0]["shadow"]["model"] = "ghost"
    with pytest.raises(RoutesConfigError, match="/p/a: shadow model without a route: ghost"):
        parse_routes_config(config)
    config["routes"][0]["shadow"]["model"] = "m_a"
    with pytest.raises(RoutesConfigError, match="/p/a: the shadow m_a already answers"):
        parse_routes_config(config)


def test_a_route_on_the_routers_own_path_is_refused() -> None:
    fleet = parse_fleet(SHADOWED)
    config = build_routes_config(fleet, _resolved(fleet), _url)
    config["routes"][0]["path"] = "/openapi.json"
    with pytest.raises(RoutesConfigError, match=r"/openapi\.json: the router serves"):
        parse_routes_config(config)
