"""End to end: `fleet serve` as a user runs it, every route called, stopped with SIGTERM."""

from __future__ import annotations

import os
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
from fleet.local import free_port
from fleet.registry import ResolvedModel

from fleet.schema import random_records
from fleet.spec import Fleet
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, demo_home: Path
) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """`fleet serve` in a fresh working folder whose default registry holds the demo."""
    work = tmp_path_factory.mktemp("serve")
    (work / ".fleet").mkdir()
    shutil.copy(demo_home / "mlflow.db", work / ".fleet" / "mlflow.db")
    shutil.copy(ROOT / "models.yaml", work / "models.yaml")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = work / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet.cli",
                "serve",
                "--port",
                str(port),
                "--ready-timeout",
                "600",
            ],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_summary(proc, log)
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_summary(proc: subprocess.Popen[str], log: Path, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        if "Ctrl-C stops them all" in text:
            return
        if proc.poll() is not None:
            pytest.fail(f"fleet serve exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(1)
    pytest.fail(f"fleet serve not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


def test_summary_names_router_swagger_and_one_curl_per_route(
    served: tuple[str, subprocess.Popen[str], Path], demo_fleet: Fleet
) -> None:
    url, _, log = served
    text = log.read_text()
    assert f"router: {url}" in text
    assert f"{url}/docs" in text
    for model in demo_fleet.models:
        assert f"curl -s {url}{model.route} " in text
    assert "DOWN" not in text


def test_every_route_answers_with_its_model(
    served: tuple[str, subprocess.Popen[str], Path], demo_resolved: list[ResolvedModel]
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
    served: tuple[str, subprocess.Popen[str], Path],
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


def test_sigterm_stops_every_process_it_started(
    served: tuple[str, subprocess.Popen[str], Path],
) -> None:
    _, proc, log = served
    started = psutil.Process(proc.pid).children(recursive=True)
    assert len(started) >= 11  # ten model servers and the router, plus their workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]
    _gone, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, [p.pid for p in alive]
