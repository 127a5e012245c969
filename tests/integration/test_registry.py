"""fleet.host.registry against real MLflow registries (sqlite), and the demo registry itself."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

from fleet.errors import ResolutionError
from fleet.host.demo_registry import CHALLENGED, MATCH_INPUTS, create_demo_registry
from fleet.host.environment import HostEnvironment
from fleet.host.processes import free_port
from fleet.host.registry import Registry, local_tracking_uri
from fleet.resolved import ResolvedModel
from fleet.schema import Column
from fleet.spec import Fleet
from fleet.specfile import parse_fleet
from tests.support import local_model_dir, register_pyfunc

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """The smallest pyfunc model: logging it needs no training and no dependency lookup."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return model_input.iloc[:, 0]


def _schema(*names: str) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("double", n) for n in names]), outputs=Schema([ColSpec("double")])
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registry of its own: `tiny` v1 (x) and v2 (x, y) with champion on v1,
    `unsigned` without a signature, `orphan` whose artifacts do not exist."""
    home = tmp_path_factory.mktemp("small-registry")
    uri = local_tracking_uri(home)
    artifacts = home / "artifacts"

    def log(name: str, signature: ModelSignature | None) -> str:
        return register_pyfunc(
            uri, name, Echo(), experiment="small", artifacts=artifacts, signature=signature
        )

    runs = [log("tiny", _schema("x")), log("tiny", _schema("x", "y"))]
    log("unsigned", None)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("orphan")
    client.create_model_version("orphan", source=(home / "gone").as_uri())
    client.set_registered_model_alias("tiny", "champion", "1")
    return {"uri": uri, "runs": runs, "client": client}


def _fleet(*entries: str) -> Fleet:
    return parse_fleet("models:\n" + "".join(f"  - {e}\n" for e in entries))


def test_demo_fleet_resolves_versions_uris_runs_and_inputs(
    demo_resolved: list[ResolvedModel], demo_uri: str, demo_fleet: Fleet
) -> None:
    assert [r.name for r in demo_resolved] == [m.name for m in demo_fleet.models]
    client = MlflowClient(tracking_uri=demo_uri, registry_uri=demo_uri)
    for r in demo_resolved:
        registered = client.get_model_version(r.model.mlflow_name, str(r.version))
        # The challenger entry picks version 2 of another entry's registered model.
        challenger = r.model.registered_model is not None
        assert (r.model.mlflow_name, r.version) == ((CHALLENGED, 2) if challenger else (r.name, 1))
        assert r.model_uri == f"models:/{r.model.mlflow_name}/{r.version}"
        assert r.run_id == registered.run_id != ""
        assert r.source == registered.source
        assert r.model.route.startswith(("/probability/", "/demand/"))
        assert r.to_dict()["inputs"] == [c.to_dict() for c in r.inputs]
        assert ResolvedModel.from_dict(r.to_dict()) == r
        if r.name.startswith("match_probability"):
            assert r.inputs == [Column(n, "double") for n in MATCH_INPUTS]
        else:
            assert r.inputs == [
                Column("hour_of_week", "long"),
                Column("temperature", "double"),
                Column("holiday", "boolean"),
            ]
        assert "float64" in r.output


def test_stack_alias_resolves_through_the_other_alias(
    demo_fleet: Fleet, demo_registry: Registry
) -> None:
    resolved = demo_registry.resolve(demo_fleet.with_alias("challenger"))
    picked = {r.name: r.model.alias for r in resolved}
    assert picked["match_probability_2_TAXI_trafficaware"] == "challenger"
    assert picked["match_probability_1_TAXI_trafficaware"] is None  # pinned to version 1


def test_every_problem_is_reported_at_once(small: dict[str, Any]) -> None:
    # Fleet.model_validate, not parse_fleet: one registered model may fail several ways here.
    fleet = Fleet.model_validate(
        {
            "models": [
                {"name": "tiny", "version": 1, "endpoint": "ok"},
                {"name": "ghost", "alias": "champion", "endpoint": "a"},
                {"name": "tiny", "version": 9, "endpoint": "b"},
                {"name": "unsigned", "version": 1, "endpoint": "c"},
                {"name": "orphan", "version": 1, "endpoint": "d"},
                {"name": "tiny", "alias": "nope", "endpoint": "e"},
            ]
        }
    )
    with pytest.raises(ResolutionError) as info:
        Registry(small["uri"]).resolve(fleet)
    found = info.value.problems
    assert str(info.value) == "\n".join(found)
    assert len(found) == 5, found
    ghost, version, unsigned, orphan, alias = found
    assert ghost.startswith("model 'ghost': alias 'champion' not found")
    assert version.startswith("model 'tiny': version 9 not found")
    assert unsigned == "model 'unsigned' has no signature"
    assert orphan.startswith("model 'orphan': cannot read the model's metadata")
    assert alias.startswith("model 'tiny': alias 'nope' not found")


def test_alias_picks_the_aliased_version_and_follows_a_move(small: dict[str, Any]) -> None:
    fleet = _fleet("{name: tiny, alias: champion, endpoint: t}")
    (first,) = Registry(small["uri"]).resolve(fleet)
    assert (first.version, first.model_uri, first.run_id) == (1, "models:/tiny/1", small["runs"][0])
    assert first.inputs == [Column("x", "double")]
    small["client"].set_registered_model_alias("tiny", "champion", "2")
    try:
        (moved,) = Registry(small["uri"]).resolve(fleet)
    finally:
        small["client"].set_registered_model_alias("tiny", "champion", "1")
    assert (moved.version, moved.model_uri, moved.run_id) == (2, "models:/tiny/2", small["runs"][1])
    assert moved.inputs == [Column("x", "double"), Column("y", "double")]


def test_pinned_version_ignores_the_alias(small: dict[str, Any]) -> None:
    (pinned,) = Registry(small["uri"]).resolve(_fleet("{name: tiny, version: 2, endpoint: t}"))
    assert pinned.version == 2
    assert pinned.run_id == small["runs"][1]


def test_two_registries_resolved_at_once_on_two_threads_each_give_their_own(
    small: dict[str, Any], demo_registry: Registry, demo_resolved: list[ResolvedModel]
) -> None:
    # Each registry's URI travels with its own call (the worker's environment), never
    # through process-wide state another thread could change in the meantime.
    tiny = _fleet("{name: tiny, version: 1, endpoint: t}")
    demand = _fleet("{name: demand_forecast_1, version: 1, endpoint: d}")
    environment = dict(os.environ)
    calls = [
        (Registry(small["uri"]), tiny),
        (demo_registry, demand),
        (demo_registry, tiny),
        (Registry(small["uri"]), demand),
    ] * 2

    def resolve(call: tuple[Registry, Fleet]) -> list[ResolvedModel] | ResolutionError:
        registry, fleet = call
        try:
            return registry.resolve(fleet)
        except ResolutionError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        results = list(pool.map(resolve, calls))
    demand_1 = next(r for r in demo_resolved if r.name == "demand_forecast_1")
    for i in (0, 4):
        small_tiny, demo_demand, demo_tiny, small_demand = results[i : i + 4]
        assert isinstance(small_tiny, list) and isinstance(demo_demand, list)
        assert [r.run_id for r in small_tiny] == [small["runs"][0]]
        assert [r.run_id for r in demo_demand] == [demand_1.run_id]
        assert isinstance(demo_tiny, ResolutionError)
        assert demo_tiny.problems[0].startswith("model 'tiny': version 1 not found")
        assert isinstance(small_demand, ResolutionError)
        assert small_demand.problems[0].startswith("model 'demand_forecast_1': version 1 not found")
    assert dict(os.environ) == environment  # resolution changes no environment variable


def test_registry_from_the_environment(tmp_path: Path) -> None:
    remote = "http://mlflow.internal:5000"
    env = HostEnvironment.read({"MLFLOW_TRACKING_URI": remote, "MLFLOW_TRACKING_TOKEN": "t0k"})
    from_env = Registry.from_environment(env=env, home=tmp_path)
    assert (from_env.uri, from_env.token) == (remote, "t0k")
    # --tracking-uri wins over the environment; the credentials still come from it.
    explicit = Registry.from_environment("sqlite:///elsewhere.db", env=env, home=tmp_path)
    assert (explicit.uri, explicit.token) == ("sqlite:///elsewhere.db", "t0k")
    for unset in ({}, {"MLFLOW_TRACKING_URI": ""}):
        local = Registry.from_environment(env=HostEnvironment.read(unset), home=tmp_path)
        assert local.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
        assert local.is_local(tmp_path)
    assert not from_env.is_local(tmp_path)


def test_demo_registry_has_ten_models_with_signature_example_and_aliases(
    demo_uri: str, demo_registry: Registry, demo_home: Path
) -> None:
    client = MlflowClient(tracking_uri=demo_uri, registry_uri=demo_uri)
    models = {m.name: m for m in client.search_registered_models()}
    assert len(models) == 10
    assert sum(n.startswith("match_probability_") for n in models) == 8
    assert sum(n.startswith("demand_forecast_") for n in models) == 2
    for name, model in models.items():
        assert set(model.aliases) == {"champion", "challenger"}, name
        versions = {int(v.version) for v in client.search_model_versions(f"name='{name}'")}
        challenged = name == CHALLENGED
        assert versions == ({1, 2} if challenged else {1}), name
        assert int(model.aliases["challenger"]) == (2 if challenged else 1), name
        info = Model.load(str(local_model_dir(demo_uri, name, "champion") / "MLmodel"))
        assert info.signature is not None and info.signature.inputs is not None, name
        assert info.saved_input_example_info is not None, name
    # Idempotent: a second run registers nothing new.
    lines: list[str] = []
    names = create_demo_registry(demo_registry, demo_home / "artifacts", progress=lines.append)
    assert sorted(names) == sorted(models)
    assert all(line.endswith("already registered") for line in lines), lines
    counts = {n: len(client.search_model_versions(f"name='{n}'")) for n in models}
    assert counts == {n: 2 if n == CHALLENGED else 1 for n in models}


def test_a_missing_sqlite_registry_is_one_problem_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(ResolutionError) as info:
        Registry(f"sqlite:///{db}").resolve(_fleet("{name: tiny, version: 1, endpoint: t}"))
    (problem,) = info.value.problems
    assert problem.startswith(f"no MLflow registry at sqlite:///{db}")
    assert "fleet demo-registry" in problem
    assert not db.parent.exists()


def test_an_unreachable_server_is_one_problem_without_retries() -> None:
    port = free_port()  # nothing listens on it
    fleet = _fleet("{name: a, version: 1, endpoint: a}", "{name: b, alias: champion, endpoint: b}")
    with pytest.raises(ResolutionError) as info:
        Registry(f"http://127.0.0.1:{port}").resolve(fleet)
    (problem,) = info.value.problems
    assert problem.startswith(f"cannot reach the MLflow registry at http://127.0.0.1:{port}: ")
    assert "Connection refused" in problem
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the probe's setting is undone


def test_demo_registry_puts_back_a_missing_alias(
    demo_uri: str, demo_registry: Registry, demo_home: Path
) -> None:
    client = MlflowClient(tracking_uri=demo_uri, registry_uri=demo_uri)
    client.delete_registered_model_alias("demand_forecast_1", "challenger")
    try:
        create_demo_registry(demo_registry, demo_home / "artifacts", progress=lambda _: None)
        aliases = client.get_registered_model("demand_forecast_1").aliases
    finally:
        client.set_registered_model_alias("demand_forecast_1", "challenger", "1")
    assert {k: int(v) for k, v in aliases.items()} == {"champion": 1, "challenger": 1}
