"""fleet.registry against real MLflow registries (sqlite), and the demo registry itself."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from fleet.demo import MATCH_INPUTS, create_demo_registry
from fleet.registry import (
    ResolutionError,
    ResolvedModel,
    default_tracking_uri,
    is_default_local,
    resolve_fleet,
)
from mlflow import MlflowClient
from mlflow.models import ModelSignature, get_model_info
from mlflow.types import ColSpec, Schema

from fleet.schema import Column
from fleet.spec import Fleet, parse_fleet

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """The smallest pyfunc model: logging it needs no training and no dependency lookup."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return model_input.iloc[:, 0]


def _schema(*names: str) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("double", n) for n in names]), outputs=Schema([ColSpec("double")])
    )


def _log(name: str, signature: ModelSignature | None) -> str:
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=Echo(),
            signature=signature,
            registered_model_name=name,
            pip_requirements=[],
        )
    return str(run.info.run_id)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A registry of its own: `tiny` v1 (x) and v2 (x, y) with champion on v1,
    `unsigned` without a signature, `orphan` whose artifacts do not exist."""
    home = tmp_path_factory.mktemp("small-registry")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        mlflow.create_experiment("small", artifact_location=(home / "artifacts").as_uri())
        mlflow.set_experiment("small")
        runs = [_log("tiny", _schema("x")), _log("tiny", _schema("x", "y"))]
        _log("unsigned", None)
        client = MlflowClient(uri, uri)
        client.create_registered_model("orphan")
        client.create_model_version("orphan", source=(home / "gone").as_uri())
        client.set_registered_model_alias("tiny", "champion", "1")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    yield {"uri": uri, "runs": runs, "client": client}


def _fleet(*entries: str) -> Fleet:
    return parse_fleet("models:\n" + "".join(f"  - {e}\n" for e in entries))


def test_demo_fleet_resolves_versions_uris_runs_and_inputs(
    demo_resolved: list[ResolvedModel], demo_uri: str, demo_fleet: Fleet
) -> None:
    assert [r.name for r in demo_resolved] == [m.name for m in demo_fleet.models]
    client = MlflowClient(demo_uri, demo_uri)
    for r in demo_resolved:
        registered = client.get_model_version(r.name, str(r.version))
        assert r.version == 1
        assert r.model_uri == f"models:/{r.name}/1"
        assert r.run_id == registered.run_id != ""
        assert r.source == registered.source
        assert r.model.route.startswith(("/probability/", "/demand/"))
        assert r.to_dict()["inputs"] == [c.to_dict() for c in r.inputs]
        if r.name.startswith("match_probability"):
            assert r.inputs == [Column(n, "double") for n in MATCH_INPUTS]
        else:
            assert r.inputs == [
                Column("hour_of_week", "long"),
                Column("temperature", "double"),
                Column("holiday", "boolean"),
            ]
        assert "float64" in r.output


def test_stack_alias_resolves_through_the_other_alias(demo_fleet: Fleet, demo_uri: str) -> None:
    resolved = resolve_fleet(demo_fleet.with_alias("challenger"), demo_uri)
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
        resolve_fleet(fleet, small["uri"])
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
    (first,) = resolve_fleet(fleet, small["uri"])
    assert (first.version, first.model_uri, first.run_id) == (1, "models:/tiny/1", small["runs"][0])
    assert first.inputs == [Column("x", "double")]
    small["client"].set_registered_model_alias("tiny", "champion", "2")
    try:
        (moved,) = resolve_fleet(fleet, small["uri"])
    finally:
        small["client"].set_registered_model_alias("tiny", "champion", "1")
    assert (moved.version, moved.model_uri, moved.run_id) == (2, "models:/tiny/2", small["runs"][1])
    assert moved.inputs == [Column("x", "double"), Column("y", "double")]


def test_pinned_version_ignores_the_alias(small: dict[str, Any]) -> None:
    (pinned,) = resolve_fleet(_fleet("{name: tiny, version: 2, endpoint: t}"), small["uri"])
    assert pinned.version == 2
    assert pinned.run_id == small["runs"][1]


def test_resolution_leaves_mlflow_global_uris_alone(small: dict[str, Any]) -> None:
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    resolve_fleet(_fleet("{name: tiny, version: 1, endpoint: t}"), small["uri"])
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before


def test_default_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert default_tracking_uri() == "http://mlflow.internal:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    local = default_tracking_uri()
    assert local == f"sqlite:///{tmp_path.resolve() / '.fleet' / 'mlflow.db'}"
    assert is_default_local(local)
    assert not is_default_local("http://mlflow.internal:5000")


def test_demo_registry_has_ten_models_with_signature_example_and_aliases(
    demo_uri: str, demo_home: Path
) -> None:
    client = MlflowClient(demo_uri, demo_uri)
    models = {m.name: m for m in client.search_registered_models()}
    assert len(models) == 10
    assert sum(n.startswith("match_probability_") for n in models) == 8
    assert sum(n.startswith("demand_forecast_") for n in models) == 2
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(demo_uri)
    mlflow.set_registry_uri(demo_uri)
    try:
        for name, model in models.items():
            assert set(model.aliases) == {"champion", "challenger"}, name
            info = get_model_info(f"models:/{name}@champion")
            assert info.signature is not None and info.signature.inputs is not None, name
            assert info.saved_input_example_info is not None, name
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    # Idempotent: a second run registers nothing new.
    lines: list[str] = []
    names = create_demo_registry(demo_uri, demo_home / "artifacts", progress=lines.append)
    assert sorted(names) == sorted(models)
    assert all(line.endswith("already registered") for line in lines), lines
    assert all(len(client.search_model_versions(f"name='{n}'")) == 1 for n in models)


def test_a_missing_sqlite_registry_is_one_problem_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(ResolutionError) as info:
        resolve_fleet(_fleet("{name: tiny, version: 1, endpoint: t}"), f"sqlite:///{db}")
    (problem,) = info.value.problems
    assert problem.startswith(f"no MLflow registry at sqlite:///{db}")
    assert "fleet demo-registry" in problem
    assert not db.parent.exists()


def test_an_unreachable_server_is_one_problem_without_retries() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fleet = _fleet("{name: a, version: 1, endpoint: a}", "{name: b, alias: champion, endpoint: b}")
    with pytest.raises(ResolutionError) as info:
        resolve_fleet(fleet, f"http://127.0.0.1:{port}")
    (problem,) = info.value.problems
    assert problem.startswith(f"cannot reach the MLflow registry at http://127.0.0.1:{port}: ")
    assert "Connection refused" in problem
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the probe's setting is undone


def test_demo_registry_puts_back_a_missing_alias(demo_uri: str, demo_home: Path) -> None:
    client = MlflowClient(demo_uri, demo_uri)
    client.delete_registered_model_alias("demand_forecast_1", "challenger")
    try:
        create_demo_registry(demo_uri, demo_home / "artifacts", progress=lambda _: None)
        aliases = client.get_registered_model("demand_forecast_1").aliases
    finally:
        client.set_registered_model_alias("demand_forecast_1", "challenger", "1")
    assert {k: int(v) for k, v in aliases.items()} == {"champion": 1, "challenger": 1}
