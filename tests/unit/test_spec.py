"""fleet.spec: the models.yaml schema, its merge of defaults and its error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import SpecError
from fleet.naming import k8s_name
from fleet.spec import Fleet, Shadow
from fleet.specfile import load_fleet, parse_fleet

ROOT = Path(__file__).resolve().parents[2]

FIELD_FORMAT = """\
- name: match_probability_2_TAXI_trafficunaware
  version: 1
  endpoint: probability
  parameters: [2, TAXI, trafficunaware]
"""

FULL = """\
defaults:
  replicas: 2
  cpu: 500m
  batching: {enabled: true, max_batch_size: 64, max_latency_ms: 10}
  memory: {request_margin_percent: 20}
models:
  - name: plain
    alias: champion
    endpoint: probability
    parameters: [1, TAXI]
  - name: tuned
    version: 3
    endpoint: probability
    parameters: [2, TAXI]
    replicas: 4
    batching: {max_batch_size: 32}
    memory: {fixed_mib: 512}
    autoscaling: {max_replicas: 8}
  - name: other
    alias: champion
    endpoint: probability
    parameters: [3, TAXI]
experiments:
  - route: /probability/ab/
    sticky_header: X-Caller-Id
    variants:
      - {model: plain, weight: 30}
      - {model: other, weight: 70}
"""


def problems(text: str) -> list[str]:
    """The problems parse_fleet reports for `text` (it must fail)."""
    with pytest.raises(SpecError) as info:
        parse_fleet(textwrap.dedent(text))
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_field_format_is_accepted_as_written() -> None:
    fleet = parse_fleet(FIELD_FORMAT)
    (entry,) = fleet.models
    assert entry.version == 1
    assert entry.alias is None
    assert entry.route == "/probability/2/TAXI/trafficunaware"
    (model,) = fleet.resolved_models()
    assert model.route == "/probability/2/TAXI/trafficunaware"
    assert model.k8s_name == k8s_name("match_probability_2_TAXI_trafficunaware")
    assert model.settings.replicas == 1
    assert model.settings.batching.enabled is True
    assert fleet.experiments == []


def test_full_form_merges_defaults_with_overrides() -> None:
    models = {m.name: m for m in parse_fleet(FULL).resolved_models()}
    plain, tuned = models["plain"].settings, models["tuned"].settings
    assert (plain.replicas, plain.cpu) == (2, "500m")
    assert plain.batching.max_batch_size == 64
    assert plain.memory.request_margin_percent == 20
    assert plain.memory.limit_factor == 1.5  # the built-in default under a partial default
    assert plain.autoscaling is None
    # An override of one batching field keeps the other fields of the defaults.
    assert tuned.batching.max_batch_size == 32
    assert tuned.batching.max_latency_ms == 10
    assert tuned.batching.enabled is True
    assert (tuned.replicas, tuned.cpu) == (4, "500m")
    assert tuned.memory.fixed_mib == 512
    assert tuned.memory.request_margin_percent == 20
    assert tuned.autoscaling is not None
    assert (tuned.autoscaling.min_replicas, tuned.autoscaling.max_replicas) == (1, 8)


def test_experiment_is_parsed_and_its_route_normalised() -> None:
    (exp,) = parse_fleet(FULL).experiments
    assert exp.route == "/probability/ab"
    assert exp.sticky_header == "X-Caller-Id"
    assert [(v.model, v.weight) for v in exp.variants] == [("plain", 30), ("other", 70)]


def test_with_alias_overrides_only_alias_picked_models() -> None:
    fleet = parse_fleet(FULL)
    staged = fleet.with_alias("challenger")
    assert {m.name: (m.version, m.alias) for m in staged.models} == {
        "plain": (None, "challenger"),
        "tuned": (3, None),
        "other": (None, "challenger"),
    }
    assert [m.alias for m in fleet.models] == ["champion", None, "champion"]  # unchanged
    assert fleet.with_alias(None) == fleet
    assert fleet.with_alias("") == fleet


def test_a_stack_alias_leaves_a_second_deployment_of_a_registered_model_alone() -> None:
    fleet = load_fleet(ROOT / "models.yaml")
    aliases = {m.name: m.alias for m in fleet.with_alias("champion").models}
    # Production follows `champion`, yet still compares its champion with the challenger.
    assert aliases["match_probability_2_TAXI_trafficaware_challenger"] == "challenger"
    assert aliases["match_probability_2_TAXI_trafficaware"] == "champion"
    assert {a for name, a in aliases.items() if not name.endswith("_challenger")} <= {
        "champion",
        None,
    }


def test_only_keeps_named_models_and_their_experiments() -> None:
    fleet = parse_fleet(FULL)
    assert [m.name for m in fleet.only(["plain", "other"]).models] == ["plain", "other"]
    assert len(fleet.only(["plain", "other"]).experiments) == 1
    assert fleet.only(["plain", "tuned"]).experiments == []
    with pytest.raises(SpecError, match="no model named 'nope'"):
        fleet.only(["plain", "nope"])


def test_repository_models_yaml_is_the_demo_fleet() -> None:
    fleet = load_fleet(ROOT / "models.yaml")
    models = {m.name: m for m in fleet.resolved_models()}
    assert len(models) == 11
    challenger = models["match_probability_2_TAXI_trafficaware_challenger"]
    assert (challenger.mlflow_name, challenger.alias) == (
        "match_probability_2_TAXI_trafficaware",
        "challenger",
    )
    assert fleet.shadows() == {
        "/probability/2/TAXI/trafficaware": Shadow(model=challenger.name, percent=10)
    }
    assert models["demand_forecast_2"].settings.batching.max_batch_size == 32
    assert models["demand_forecast_2"].settings.batching.max_latency_ms == 10
    assert models["match_probability_1_TAXI_trafficaware"].version == 1
    (exp,) = fleet.experiments
    assert exp.route == "/probability/2/TAXI"
    assert {v.model for v in exp.variants} <= set(models)


def test_yaml_1_1_scalars_keep_the_text_as_written() -> None:
    # YAML 1.1 reads NO/on as booleans, 010 as 8 and 0x1f as 31.
    fleet = parse_fleet("""\
- name: 0x10
  version: 1
  endpoint: on
  parameters: [2, NO, on, 010, 0x1f, 1.0, '7', 3]
""")
    (entry,) = fleet.models
    assert entry.name == "0x10"
    assert entry.route == "/on/2/NO/on/010/0x1f/1.0/7/3"


# Each error case: the YAML, the texts the one problem must hold (culprit, field), its line.
ERROR_CASES = {
    "a route on the router's own path": (
        """\
        models:
          - {name: a, version: 1, endpoint: x}
          - {name: b, version: 1, endpoint: metrics}
        """,
        ["model 'b'", "endpoint/parameters", "/metrics", "router's own path"],
        3,
    ),
    "an experiment under the router's docs": (
        """\
        models:
          - {name: a, version: 1, endpoint: x}
          - {name: b, version: 1, endpoint: y}
        experiments:
          - route: /docs/ab
            variants: [{model: a, weight: 50}, {model: b, weight: 50}]
        """,
        ["experiment '/docs/ab'", "route", "router's own path"],
        5,
    ),
    "a dot-dot segment": (
        """\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1, ..]}
        """,
        ["model 'a'", "parameters", "'..' is not a path segment"],
        2,
    ),
    "shadow of an unknown model": (
        """\
        models:
          - name: a
            version: 1
            endpoint: x
            shadow: {model: nope, percent: 10}
        """,
        ["model 'a'", "shadow.model", "no model named 'nope'"],
        5,
    ),
    "shadow percent over 100": (
        """\
        models:
          - {name: a, version: 1, endpoint: x}
          - name: b
            version: 1
            endpoint: y
            shadow:
              model: a
              percent: 150
        """,
        ["model 'b'", "shadow.percent", "less than or equal to 100"],
        8,
    ),
    "shadow of the route's own model": (
        """\
        models:
          - name: a
            version: 1
            endpoint: x
            shadow: {model: a, percent: 10}
        """,
        ["model 'a'", "shadow.model", "route's own model"],
        5,
    ),
    "shadow that is a variant of its experiment": (
        """\
        models:
          - {name: a, version: 1, endpoint: x}
          - {name: b, version: 1, endpoint: y}
        experiments:
          - route: /ab
            variants: [{model: a, weight: 50}, {model: b, weight: 50}]
            shadow: {model: b, percent: 5}
        """,
        ["experiment '/ab'", "shadow.model", "variant"],
        7,
    ),
    "shadow without a percent": (
        """\
        models:
          - {name: a, version: 1, endpoint: x}
          - {name: b, version: 1, endpoint: y, shadow: {model: a}}
        """,
        ["model 'b'", "shadow.percent", "Field required"],
        3,
    ),
    "duplicate name": (
        """\
        models:
          - {name: a, version: 1, endpoint: x}
          - {name: b, version: 1, endpoint: y}
          - {name: a, version: 2, endpoint: z}
        """,
        ["model 'a'", "name", "duplicate", "line 2"],
        4,
    ),
    "duplicate route": (
        """\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1]}
          - name: b
            version: 1
            endpoint: x
            parameters: ['1']
        """,
        ["model 'b'", "endpoint/parameters", "/x/1", "model 'a'"],
        3,
    ),
    "experiment route collides with a model route": (
        """\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1]}
          - {name: b, version: 1, endpoint: x, parameters: [2]}
        experiments:
          - route: /x/2
            variants: [{model: a, weight: 50}, {model: b, weight: 50}]
        """,
        ["experiment '/x/2'", "route", "model 'b'"],
        5,
    ),
    "duplicate experiment route": (
        """\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1]}
          - {name: b, version: 1, endpoint: x, parameters: [2]}
        experiments:
          - route: /x/ab
            variants: [{model: a, weight: 50}, {model: b, weight: 50}]
          - route: /x/ab
            variants: [{model: a, weight: 10}, {model: b, weight: 90}]
        """,
        ["experiment '/x/ab'", "route", "duplicate"],
        7,
    ),
    "weights do not sum to 100": (
        """\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1]}
          - {name: b, version: 1, endpoint: x, parameters: [2]}
        experiments:
          - route: /x/ab
            variants:
              - {model: a, weight: 60}
              - {model: b, weight: 30}
        """,
        ["experiment '/x/ab'", "variants", "sum to 90, not 100"],
        5,
    ),
    "variant names no model": (
        """\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1]}
        experiments:
          - route: /x/ab
            variants:
              - {model: a, weight: 50}
              - {model: ghost, weight: 50}
        """,
        ["experiment '/x/ab'", "variants.1.model", "'ghost'"],
        7,
    ),
    "a model twice in one experiment": (
        """\
        models:
          - {name: a, version: 1, endpoint: x}
        experiments:
          - route: /x/ab
            variants: [{model: a, weight: 50}, {model: a, weight: 50}]
        """,
        ["experiment '/x/ab'", "variants", "model 'a' appears twice"],
        4,
    ),
    "both version and alias": (
        """\
        models:
          - {name: ok, version: 1, endpoint: x}
          - name: a
            version: 1
            alias: champion
            endpoint: y
        """,
        ["model 'a'", "'version'", "'alias'", "not both"],
        3,
    ),
    "neither version nor alias": (
        """\
        - name: a
          endpoint: y
        """,
        ["model 'a'", "'version'", "'alias'", "neither"],
        1,
    ),
    "unknown top-level key": (
        """\
        models:
          - {name: a, version: 1, endpoint: x}
        experiment: []
        """,
        ["experiment", "unknown key"],
        3,
    ),
    "unknown key in a model": (
        """\
        models:
          - name: a
            version: 1
            endpoint: x
            replica: 2
        """,
        ["model 'a'", "replica", "unknown key"],
        5,
    ),
    "unknown key in defaults": (
        """\
        defaults:
          replicas: 1
          batching: {max_batch: 8}
        models:
          - {name: a, version: 1, endpoint: x}
        """,
        ["defaults.batching.max_batch", "unknown key"],
        3,
    ),
    "bad endpoint segment": (
        """\
        models:
          - name: a
            version: 1
            endpoint: pro/bability
        """,
        ["model 'a'", "endpoint", "'pro/bability'"],
        4,
    ),
    "bad parameter segment": (
        """\
        models:
          - name: a
            version: 1
            endpoint: x
            parameters: [1, 'TA XI']
        """,
        ["model 'a'", "parameters", "'TA XI'"],
        5,
    ),
    "bad experiment route": (
        """\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1]}
          - {name: b, version: 1, endpoint: x, parameters: [2]}
        experiments:
          - route: x/a b
            variants: [{model: a, weight: 50}, {model: b, weight: 50}]
        """,
        ["experiment 'x/a b'", "route", "not a path"],
        5,
    ),
    "bad sticky header": (
        """\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1]}
          - {name: b, version: 1, endpoint: x, parameters: [2]}
        experiments:
          - route: /x/ab
            sticky_header: X Caller
            variants: [{model: a, weight: 50}, {model: b, weight: 50}]
        """,
        ["experiment '/x/ab'", "sticky_header", "'X Caller'"],
        6,
    ),
    "bad CPU in defaults": (
        """\
        defaults:
          cpu: 1.5.5
        models:
          - {name: a, version: 1, endpoint: x}
        """,
        ["defaults.cpu", "'1.5.5'", "CPU"],
        2,
    ),
    "bad CPU in a model": (
        """\
        models:
          - name: a
            version: 1
            endpoint: x
            cpu: two
        """,
        ["model 'a'", "cpu", "'two'", "CPU"],
        5,
    ),
    "bad override inside batching": (
        """\
        defaults:
          batching: {max_latency_ms: 10}
        models:
          - name: a
            version: 1
            endpoint: x
            batching:
              enabled: true
              max_batch_size: 0
        """,
        ["model 'a'", "batching.max_batch_size", "greater than or equal to 1"],
        9,
    ),
    "unknown key inside a batching override": (
        """\
        models:
          - name: a
            version: 1
            endpoint: x
            batching: {max_batch: 8}
        """,
        ["model 'a'", "batching.max_batch", "unknown key"],
        5,
    ),
    "autoscaling override below the default minimum": (
        """\
        defaults:
          autoscaling: {min_replicas: 3}
        models:
          - name: a
            version: 1
            endpoint: x
            autoscaling: {max_replicas: 2}
        """,
        ["model 'a'", "autoscaling", "max_replicas must be at least min_replicas"],
        7,
    ),
    "model without a name": (
        """\
        models:
          - {version: 1, endpoint: x}
        """,
        ["model #1", "name", "required"],
        2,
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_names_culprit_field_and_line(case: str) -> None:
    text, needles, line = ERROR_CASES[case]
    problem = only_problem(text)
    assert problem.startswith(f"models.yaml: line {line}: "), problem
    for needle in needles:
        assert needle in problem, (needle, problem)


def test_field_errors_and_version_alias_are_reported_together() -> None:
    found = problems("""\
        models:
          - name: a
            version: 1
            alias: champion
            endpoint: x
            colour: red
        """)
    assert len(found) == 2, found
    assert found[0].startswith("models.yaml: line 2: model 'a': ")
    assert "not both" in found[0]
    assert found[1] == "models.yaml: line 6: model 'a': colour: unknown key"


def test_every_kind_of_problem_is_reported_in_one_run_by_line() -> None:
    found = problems("""\
        defaults:
          cpu: lots
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1]}
          - {name: b, alias: champion, endpoint: x, parameters: [1]}
          - {name: c, version: 1, endpoint: x, parameters: [3], colour: red}
          - {name: d, version: 1, endpoint: x, parameters: [4], batching: {max_batch_size: 0}}
        experiments:
          - route: /x/ab
            variants: [{model: a, weight: 50}, {model: ghost, weight: 40}]
        """)
    lines = [int(p.split(": line ")[1].split(":")[0]) for p in found]
    assert lines == sorted(lines)
    joined = "\n".join(found)
    for needle in (
        "line 2: defaults.cpu",
        "line 5: model 'b': endpoint/parameters: route /x/1",
        "line 6: model 'c': colour: unknown key",
        "line 7: model 'd': batching.max_batch_size",
        "line 9: experiment '/x/ab': variants: the weights sum to 90",
        "line 10: experiment '/x/ab': variants.1.model: no model named 'ghost'",
    ):
        assert needle in joined, (needle, found)
    assert len(found) == 6, found


def test_bad_defaults_are_reported_once_not_per_model() -> None:
    found = problems("""\
        defaults:
          batching: {max_batch_size: 0}
        models:
          - {name: a, version: 1, endpoint: x, batching: {max_latency_ms: 5}}
          - {name: b, version: 1, endpoint: y}
        """)
    assert found == [
        "models.yaml: line 2: defaults.batching.max_batch_size: "
        "Input should be greater than or equal to 1"
    ]


def test_variant_naming_an_invalid_model_is_not_also_missing() -> None:
    found = problems("""\
        models:
          - {name: a, version: 1, endpoint: x, parameters: [1], colour: red}
          - {name: b, version: 1, endpoint: x, parameters: [2]}
        experiments:
          - route: /x/ab
            variants: [{model: a, weight: 50}, {model: b, weight: 50}]
        """)
    assert found == ["models.yaml: line 2: model 'a': colour: unknown key"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "expected a list of models or a mapping with 'models'"),
        ("42\n", "expected a list of models or a mapping with 'models'"),
        ("models: [\n  {name: a\n", "line 3: not valid YAML"),
        ("defaults: {}\n", "line 1: models: Field required"),
    ],
)
def test_malformed_files(text: str, needle: str) -> None:
    assert needle in only_problem(text)


def test_load_fleet_names_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=r"nope\.yaml: cannot read"):
        load_fleet(missing)


def test_load_fleet_names_the_file_in_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("- {name: a, endpoint: x}\n- {name: b, endpoint: y}\n")
    with pytest.raises(SpecError) as info:
        load_fleet(path)
    assert [p.split(": line")[0] for p in info.value.problems] == [str(path)] * 2


def test_resolved_models_names_the_model_with_a_bad_override() -> None:
    fleet = Fleet.model_validate(
        {"models": [{"name": "a", "version": 1, "endpoint": "x", "cpu": "0.5", "replicas": -1}]}
    )
    with pytest.raises(SpecError, match=r"model 'a': replicas: .*greater than or equal to 0"):
        fleet.resolved_models()


# Any YAML at all: parse_fleet answers with a Fleet or a SpecError, never a crash.
_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6)
_keys = st.sampled_from(
    [
        "models",
        "defaults",
        "experiments",
        "name",
        "version",
        "alias",
        "endpoint",
        "parameters",
        "batching",
        "cpu",
        "route",
        "variants",
        "model",
        "weight",
        "max_batch_size",
        "x",
    ]
)
_yaml_data = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)


@settings(deadline=None, max_examples=80)  # no timing: CI machines are shared
@given(_yaml_data)
def test_any_yaml_gives_a_fleet_or_spec_error(data: object) -> None:
    try:
        parse_fleet(yaml.safe_dump(data))
    except SpecError as exc:
        assert exc.problems and all(p.startswith("models.yaml: ") for p in exc.problems)


def test_only_drops_a_shadow_whose_model_is_left_out() -> None:
    fleet = parse_fleet("""\
models:
  - {name: a, version: 1, endpoint: x, shadow: {model: b, percent: 10}}
  - {name: b, version: 2, endpoint: y, registered_model: a}
""")
    assert fleet.shadows() == {"/x": Shadow(model="b", percent=10)}
    assert fleet.only(["a", "b"]).shadows() == fleet.shadows()
    assert fleet.only(["a"]).shadows() == {}
    (a, b) = fleet.resolved_models()
    assert (a.mlflow_name, b.mlflow_name) == ("a", "a")
