"""End to end: `fleet serve` as a user runs it, every route called, stopped with SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from fleet.host.environment import child_env
from fleet.host.model_store import ModelStore
from fleet.host.processes import Child, free_port
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from fleet.spec import Fleet
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, demo_home: Path, model_store: ModelStore
) -> Iterator[tuple[str, Child]]:
    """`fleet serve` in a fresh working folder whose default registry holds the demo.

    Its environment has no MLFLOW_* variables (the default local registry is used) and
    the session's BentoML store (models imported once).
    """
    work = tmp_path_factory.mktemp("serve")
    (work / ".fleet").mkdir()
    shutil.copy(demo_home / "mlflow.db", work / ".fleet" / "mlflow.db")
    shutil.copy(ROOT / "models.yaml", work / "models.yaml")
    port = free_port()
    argv = [sys.executable, "-m", "fleet.cli", "serve", "--port", str(port)]
    log = work / "serve.log"
    with log.open("wb") as out:
        # Not `Supervisor.start`: this child runs in the working folder (its `.fleet`).
        proc = subprocess.Popen(
            [*argv, "--ready-timeout", "600"],
            cwd=work,
            env=child_env(model_store.env()),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child(name="fleet serve", url=f"http://127.0.0.1:{port}", log_path=log, proc=proc)
    try:
        _wait_for_summary(child)
        yield child.url, child
    finally:
        child.stop()


def _wait_for_summary(child: Child, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = child.log_path.read_text()
        if "Ctrl-C stops them all" in text:
            return
        gone = child.exited()
        if gone is not None:
            pytest.fail(f"fleet serve: {gone}:\n{text[-3000:]}")
        time.sleep(1)
    pytest.fail(f"fleet serve not ready after {timeout_s} s:\n{child.log_tail(40)}")


def test_summary_names_router_swagger_and_one_curl_per_route(
    served: tuple[str, Child], demo_fleet: Fleet
) -> None:
    url, child = served
    text = child.log_path.read_text()
    assert f"router: {url}" in text
    assert f"{url}/docs" in text
    for model in demo_fleet.models:
        assert f"curl -s {url}{model.route} " in text
    assert "DOWN" not in text


def test_every_route_answers_with_its_model(
    served: tuple[str, Child], demo_resolved: list[ResolvedModel]
) -> None:
    url = served[0]
    with httpx.Client(base_url=url, timeout=30) as client:
        for r in demo_resolved:
            records = random_records(r.inputs, 3, seed=7)
            resp = client.post(r.model.route, json=records)
            assert resp.status_code == 200, (r.model.route, resp.text)
            body = resp.json()
            assert body["model"] == r.name
            assert resp.headers["X-Model"] == r.name
            assert len(body["predictions"]) == 3


def test_experiment_route_is_sticky_and_bad_input_is_refused(
    served: tuple[str, Child],
    demo_fleet: Fleet,
    demo_resolved: list[ResolvedModel],
) -> None:
    url = served[0]
    exp = demo_fleet.experiments[0]
    inputs = next(r.inputs for r in demo_resolved if r.name == exp.variants[0].model)
    record = random_records(inputs, 1, seed=3)[0]
    with httpx.Client(base_url=url, timeout=30) as client:
        seen = {
            client.post(exp.route, json=record, headers={exp.sticky_header: "alice"}).headers[
                "X-Variant"
            ]
            for _ in range(5)
        }
        assert len(seen) == 1
        assert seen <= {v.model for v in exp.variants}
        bad = client.post(exp.route, json={**record, "route_decision_score": "high"})
        assert bad.status_code == 422
        assert "route_decision_score" in bad.text


def test_sigterm_stops_every_process_it_started(served: tuple[str, Child]) -> None:
    _, child = served
    started = psutil.Process(child.pid).children(recursive=True)
    assert len(started) >= 11  # ten model servers and the router, plus their workers
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(timeout=60) == 0, child.log_tail(40)
    _gone, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, [p.pid for p in alive]
