"""Parallel image creates against an MLflow server that requires credentials.

The Pulumi engine runs a dynamic provider in `python -m pulumi.dynamic`, which serves
calls on 4 threads. Here that process gets 4 ModelImage creates at once, for 4 models of
a real `mlflow server --app-name basic-auth` (artifacts served by it, behind the same
login), each create carrying the credentials in its own inputs, plus a fifth create with
a wrong password on the same server at the same time. Credentials in process-wide state
(the environment, MLflow's globals) would leak between those calls: the four must build
and the fifth must fail, naming the registry.

Skipped, with the reason, when no Docker engine answers.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from components.image import ModelImageArgs, ModelImageProvider, image_inputs
from fleet.errors import ResolutionError
from fleet.host import docker_cli
from fleet.host.images import BuildSettings, content_hash
from fleet.host.model_store import ModelStore
from fleet.resolved import ResolvedModel
from fleet.specfile import parse_fleet
from tests.support import (
    ROOT,
    AuthMlflow,
    Servers,
    by_name,
    docker_problem,
    dynamic_provider,
    provider_create,
    register_small_models,
    secret,
    start_auth_mlflow,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

GOOD = [f"parallel_model_{i}" for i in range(4)]
REFUSED = "parallel_model_refused"
READER, READER_PASSWORD = "fleet-ci", "reader-password-for-tests"


@pytest.fixture(scope="module")
def mlflow_server(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AuthMlflow:
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    server = start_auth_mlflow(servers, tmp_path_factory.mktemp("mlflow-auth"))
    # Registered by the admin; read by a user with the default permission (READ), as CI
    # reads a production registry.
    register_small_models(server.registry(), [*GOOD, REFUSED])
    server.add_user(READER, READER_PASSWORD)
    return server


@pytest.fixture(scope="module")
def resolved(mlflow_server: AuthMlflow) -> list[ResolvedModel]:
    models = "\n".join(
        f"- {{name: {name}, version: 1, endpoint: scaled, parameters: [{i}]}}"
        for i, name in enumerate([*GOOD, REFUSED])
    )
    return mlflow_server.registry(READER, READER_PASSWORD).resolve(parse_fleet(models))


def test_the_server_refuses_a_read_without_the_right_credentials(
    mlflow_server: AuthMlflow,
) -> None:
    fleet = parse_fleet(f"- {{name: {GOOD[0]}, version: 1, endpoint: e, parameters: [x]}}")
    for registry in (
        mlflow_server.registry(READER, "wrong-password"),
        mlflow_server.registry(READER, None),
    ):
        with pytest.raises(ResolutionError, match="refused the credentials"):
            registry.resolve(fleet)


def test_four_creates_at_once_each_with_its_own_credentials(
    resolved: list[ResolvedModel],
    mlflow_server: AuthMlflow,
    model_store: ModelStore,
    tmp_path: Path,
) -> None:
    settings = BuildSettings(store=model_store)

    def props(model: ResolvedModel, password: str) -> dict[str, Any]:
        args = ModelImageArgs(
            resolved=model,
            build=settings,
            tracking_uri=mlflow_server.url,
            push=False,
            mlflow_username=READER,
        )
        return {**image_inputs(args), "mlflow_password": secret(password)}

    calls = [props(by_name(resolved, name), READER_PASSWORD) for name in GOOD]
    calls.append(props(by_name(resolved, REFUSED), "wrong-password"))
    # The provider process's BentoML store is the session's (its only setting read from
    # the environment at start); everything else comes with each call.
    log = tmp_path / "provider.log"
    with dynamic_provider(ROOT, log, {"BENTOML_HOME": str(model_store.home)}) as stub:

        def create(p: dict[str, Any]) -> tuple[str, dict[str, Any]] | grpc.RpcError:
            try:
                return provider_create(stub, p, ModelImageProvider(), timeout_s=1500)
            except grpc.RpcError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            answers = list(pool.map(create, calls))

    *good, refused = answers
    for name, answer in zip(GOOD, good, strict=True):
        if isinstance(answer, grpc.RpcError):
            pytest.fail(f"{name}: {answer.details()}")
        id_, outs = answer
        model = by_name(resolved, name)
        assert outs["built"] is True  # a new model: downloaded with the credentials, built
        assert outs["content_hash"] == content_hash(model, settings)
        assert id_ == outs["image_ref"] == outs["image"]  # not pushed: deployed by tag
        assert outs["digest"] == ""
        info = docker_cli.inspect(outs["image_ref"])
        assert info is not None and info["Id"] == outs["image_id"]
        labels = info["Config"]["Labels"]
        assert (
            labels["fleet.model"] == name and labels["fleet.content-hash"] == outs["content_hash"]
        )
        assert "mlflow_password" not in outs and READER_PASSWORD not in json.dumps(outs)
    # The wrong password fails its own create, naming the registry and the model.
    assert isinstance(refused, grpc.RpcError)
    details = refused.details() or ""
    assert f"model '{REFUSED}'" in details
    assert f"the MLflow registry at {mlflow_server.url} refused the credentials" in details
    assert "wrong-password" not in details
    refused_ref = f"{settings.registry}/{by_name(resolved, REFUSED).model.k8s_name}"
    assert (
        docker_cli.inspect(f"{refused_ref}:{content_hash(by_name(resolved, REFUSED), settings)}")
        is None
    )
