"""One real model image: built from a demo model, cached by hash, run, and asked."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import mlflow.pyfunc
import pandas as pd
import pytest
from fleet.build import PORT, UID, BuildSettings, ImageResult, build_image, content_hash
from fleet.image import docker, inspect
from fleet.registry import ResolvedModel
from fleet.serving.launch import wait_ready

from fleet.schema import random_records

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "match_probability_2_TAXI_trafficaware"  # small: a logistic regression


def engine_reachable() -> bool:
    try:
        return subprocess.run([docker(), "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def container_ready(cid: str, url: str, timeout_s: float) -> None:
    """Wait for the container's `url` to answer /readyz; fail with its log if it does not."""

    def alive() -> bool:
        state = subprocess.run(
            [docker(), "inspect", "-f", "{{.State.Running}}", cid], capture_output=True, text=True
        )
        return state.stdout.strip() == "true"

    try:
        wait_ready(url, timeout_s=timeout_s, alive=alive)
    except (RuntimeError, TimeoutError) as exc:
        logs = subprocess.run([docker(), "logs", cid], capture_output=True, text=True)
        raise AssertionError(f"{exc}\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}") from exc


@pytest.fixture(scope="module")
def resolved(demo_resolved: list[ResolvedModel]) -> ResolvedModel:
    if not engine_reachable():
        pytest.skip(f"no Docker engine answers `{docker()} info`")
    return next(r for r in demo_resolved if r.name == MODEL)


@pytest.fixture(scope="module")
def built(
    resolved: ResolvedModel, demo_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageResult]:
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(tmp_path_factory.mktemp("bentoml"))
    try:
        yield build_image(resolved, demo_uri, BuildSettings())
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


@pytest.fixture(scope="module")
def container(built: ImageResult) -> Iterator[tuple[str, str]]:
    """(container id, base URL) of the image running with its port on loopback."""
    run = [docker(), "run", "-d", "-p", f"127.0.0.1::{PORT}", built.image_ref]
    cid = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
    try:
        port = (
            subprocess.run(
                [docker(), "port", cid, f"{PORT}/tcp"], capture_output=True, text=True, check=True
            )
            .stdout.split(":")[-1]
            .strip()
        )
        url = f"http://127.0.0.1:{port}"
        container_ready(cid, url, timeout_s=240)
        yield cid, url
    finally:
        subprocess.run([docker(), "rm", "-f", cid], capture_output=True)


def test_the_image_is_tagged_by_content_hash_and_cached(
    built: ImageResult, resolved: ResolvedModel, demo_uri: str
) -> None:
    settings = BuildSettings()
    assert built.content_hash == content_hash(resolved, settings)
    assert built.image_ref.endswith(f"/{resolved.model.k8s_name}:{built.content_hash}")
    again = build_image(resolved, demo_uri, settings)
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
    container: tuple[str, str], resolved: ResolvedModel, demo_uri: str
) -> None:
    _, url = container
    records = random_records(resolved.inputs, 5, seed=11)
    resp = httpx.post(f"{url}/predict", json={"records": records}, timeout=30)
    assert resp.status_code == 200, resp.text
    mlflow.set_tracking_uri(demo_uri)
    mlflow.set_registry_uri(demo_uri)
    expected = mlflow.pyfunc.load_model(resolved.model_uri).predict(pd.DataFrame(records))
    assert resp.json() == pytest.approx(list(expected), rel=1e-12)
    bad = httpx.post(f"{url}/predict", json={"records": [{"eventtime": "x"}]}, timeout=30)
    assert bad.status_code == 400
    assert "eventtime" in bad.text


def test_the_container_holds_no_deploy_or_test_tools(container: tuple[str, str]) -> None:
    cid, _ = container
    probe = (
        "import importlib.util as u, os; "
        "print(os.getuid(), [m for m in ('pulumi', 'pytest', 'mypy', 'ruff') if u.find_spec(m)])"
    )
    out = subprocess.run(
        [docker(), "exec", cid, "/usr/bin/python3", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(maxsplit=1)
    assert out == [str(UID), "[]\n"] or out == [str(UID), "[]"]


def test_the_bento_carries_the_hash(built: ImageResult) -> None:
    info = inspect(built.image_ref)
    assert info is not None
    assert info["Config"]["Labels"]["fleet.bento"].endswith(f":{built.content_hash}")
