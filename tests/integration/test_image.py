"""One real model image: built from a demo model, cached by hash, run, and asked."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import mlflow.pyfunc
import pandas as pd
import pytest

from fleet.host import docker_cli
from fleet.host.docker_cli import inspect
from fleet.host.images import PORT, UID, BuildSettings, ImageResult, build_image, content_hash
from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from tests.support import by_name, container, container_ready, docker_problem

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "match_probability_2_TAXI_trafficaware"  # small: a logistic regression


@pytest.fixture(scope="module")
def resolved(demo_resolved: list[ResolvedModel]) -> ResolvedModel:
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    return by_name(demo_resolved, MODEL)


@pytest.fixture(scope="module")
def settings(model_store: ModelStore) -> BuildSettings:
    return BuildSettings(store=model_store)


@pytest.fixture(scope="module")
def built(resolved: ResolvedModel, demo_registry: Registry, settings: BuildSettings) -> ImageResult:
    return build_image(resolved, demo_registry, settings)


@pytest.fixture(scope="module")
def running(built: ImageResult) -> Iterator[tuple[str, str]]:
    """(container id, base URL) of the image running with its port on loopback."""
    with container("-p", f"127.0.0.1::{PORT}", built.image_ref) as cid:
        port = docker_cli.check("port", cid, f"{PORT}/tcp").split(":")[-1].strip()
        url = f"http://127.0.0.1:{port}"
        container_ready(cid, url, timeout_s=240)
        yield cid, url


def test_the_image_is_tagged_by_content_hash_and_cached(
    built: ImageResult, resolved: ResolvedModel, demo_registry: Registry, settings: BuildSettings
) -> None:
    assert built.content_hash == content_hash(resolved, settings)
    # The store is where builds keep their files, not part of what the image holds.
    assert content_hash(resolved, BuildSettings()) == built.content_hash
    assert built.image_ref.endswith(f"/{resolved.model.k8s_name}:{built.content_hash}")
    again = build_image(resolved, demo_registry, settings)
    assert again.built is False
    assert again.image_id == built.image_id


def test_the_image_runs_as_non_root_on_its_port_with_its_labels(built: ImageResult) -> None:
    info = inspect(built.image_ref)
    assert info is not None
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert f"{PORT}/tcp" in config["ExposedPorts"]
    assert config["Labels"]["fleet.content-hash"] == built.content_hash
    assert config["Labels"]["fleet.model"] == MODEL


def test_the_container_answers_like_the_pyfunc_model(
    running: tuple[str, str],
    resolved: ResolvedModel,
    model_store: ModelStore,
    demo_registry: Registry,
) -> None:
    _, url = running
    records = random_records(resolved.inputs, 5, seed=11)
    resp = httpx.post(f"{url}/predict", json={"records": records}, timeout=30)
    assert resp.status_code == 200, resp.text
    # The registry's model as imported into the store (an image found under its tag
    # was not built in this session, so the import may not have happened yet).
    tag = model_store.import_model(resolved, demo_registry)
    local = model_store.model_dir(tag) / "mlflow_model"
    expected = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame(records))
    assert resp.json() == pytest.approx(list(expected), rel=1e-12)
    bad = httpx.post(f"{url}/predict", json={"records": [{"eventtime": "x"}]}, timeout=30)
    assert bad.status_code == 400
    assert "eventtime" in bad.text


def test_the_container_holds_no_deploy_or_test_tools(running: tuple[str, str]) -> None:
    cid, _ = running
    probe = (
        "import importlib.util as u, os; "
        "print(os.getuid(), [m for m in ('pulumi', 'pytest', 'mypy', 'ruff') if u.find_spec(m)])"
    )
    out = docker_cli.check("exec", cid, "/usr/bin/python3", "-c", probe).split(maxsplit=1)
    assert out == [str(UID), "[]\n"] or out == [str(UID), "[]"]


def test_the_bento_carries_the_hash(built: ImageResult) -> None:
    info = inspect(built.image_ref)
    assert info is not None
    assert info["Config"]["Labels"]["fleet.bento"].endswith(f":{built.content_hash}")
