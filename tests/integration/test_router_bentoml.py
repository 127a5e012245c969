"""The router in front of a real BentoML model server (fleet.serving, contract 2).

One demo model served by `bentoml serve` as `fleet serve` runs it, the router as
`python -m fleet.router` with the config `build_routes_config` makes: predictions
through the router equal the model server's own, for one record and for a batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from fleet.local import free_port
from fleet.registry import ResolvedModel

from fleet.routes import build_routes_config
from fleet.schema import random_records
from fleet.spec import Fleet
from tests.integration.test_router import Served

launch = pytest.importorskip("fleet.serving.launch")

pytestmark = pytest.mark.slow

MODEL = "demand_forecast_1"


@pytest.fixture(scope="module")
def model_server(
    tmp_path_factory: pytest.TempPathFactory, demo_resolved: list[ResolvedModel], demo_uri: str
) -> Iterator[tuple[ResolvedModel, str]]:
    resolved = next(r for r in demo_resolved if r.name == MODEL)
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(tmp_path_factory.mktemp("bentoml"))
    proc = None
    try:
        tag = launch.prepare_model(resolved, demo_uri)
        port = free_port()
        argv, env = launch.server_command(resolved, port, bento_model_tag=tag)
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        launch.wait_ready(
            url, timeout_s=240, alive=lambda: proc is not None and proc.poll() is None
        )
        yield resolved, url
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


@pytest.fixture(scope="module")
def router(
    model_server: tuple[ResolvedModel, str],
    demo_fleet: Fleet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    resolved, url = model_server
    config = build_routes_config(demo_fleet.only([MODEL]), [resolved], lambda _: url)
    served = Served.router(config, tmp_path_factory.mktemp("router-bentoml") / "routes.json")
    try:
        yield served.start().url
    finally:
        served.stop()


def test_predictions_through_the_router_equal_the_model_servers(
    model_server: tuple[ResolvedModel, str], router: str
) -> None:
    resolved, url = model_server
    records = random_records(resolved.inputs, 20, seed=5)
    direct = httpx.post(f"{url}/predict", json={"records": records}, timeout=30)
    assert direct.status_code == 200, direct.text
    routed = httpx.post(router + resolved.model.route, json=records, timeout=30)
    assert routed.status_code == 200, routed.text
    assert routed.headers["X-Model"] == MODEL
    assert routed.headers["X-Model-Version"] == str(resolved.version)
    assert routed.json() == {
        "model": MODEL,
        "version": resolved.version,
        "predictions": direct.json(),
    }
    one = httpx.post(router + resolved.model.route, json=records[3], timeout=30)
    assert one.json()["predictions"] == direct.json()[3:4]


def test_bad_input_is_refused_by_the_router_with_the_field(
    model_server: tuple[ResolvedModel, str], router: str
) -> None:
    resolved, _ = model_server
    record = random_records(resolved.inputs, 1, seed=1)[0]
    record["hour_of_week"] = "monday"
    resp = httpx.post(router + resolved.model.route, json=record, timeout=30)
    assert resp.status_code == 422
    assert resp.json()["problems"][0]["field"] == "hour_of_week"
