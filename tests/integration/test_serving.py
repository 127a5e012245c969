"""Real BentoML model servers on demo models: answers, batching, validation, probes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import pandas as pd
import pytest
from fleet.registry import ResolvedModel
from fleet.serving.launch import prepare_model, server_command, wait_ready

from fleet.schema import random_records

pytestmark = pytest.mark.slow

MATCH = "match_probability_1_TAXI_trafficaware"
DEMAND = "demand_forecast_1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("bentoml")
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        yield home
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


def by_name(resolved: list[ResolvedModel], name: str) -> ResolvedModel:
    return next(r for r in resolved if r.name == name)


def unbatched(resolved: ResolvedModel) -> ResolvedModel:
    settings = resolved.model.settings
    off = settings.model_copy(
        update={"batching": settings.batching.model_copy(update={"enabled": False})}
    )
    return replace(resolved, model=resolved.model.model_copy(update={"settings": off}))


@pytest.fixture(scope="module")
def servers(
    bentoml_home: Path, demo_resolved: list[ResolvedModel], demo_uri: str
) -> Iterator[dict[str, str]]:
    """Both servers, started together (their start-ups overlap): the logistic regression
    with batching on (max batch 64), the decision tree (long, double and boolean inputs)
    with batching off."""
    wanted = {
        MATCH: by_name(demo_resolved, MATCH),
        DEMAND: unbatched(by_name(demo_resolved, DEMAND)),
    }
    procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for name, resolved in wanted.items():
            tag = prepare_model(resolved, demo_uri)
            port = free_port()
            argv, env = server_command(resolved, port, bento_model_tag=tag)
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            procs[name] = (proc, f"http://127.0.0.1:{port}")
        for proc, url in procs.values():
            wait_ready(url, timeout_s=240, alive=lambda p=proc: p.poll() is None)
        yield {name: url for name, (_, url) in procs.items()}
    finally:
        for proc, _ in procs.values():
            os.killpg(proc.pid, 15)
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@pytest.fixture(scope="module")
def match_server(servers: dict[str, str]) -> str:
    return servers[MATCH]


@pytest.fixture(scope="module")
def demand_server(servers: dict[str, str]) -> str:
    return servers[DEMAND]


def reference(resolved: ResolvedModel, tracking_uri: str, records: list[dict[str, Any]]) -> Any:
    """The MLflow pyfunc model's own predictions for `records`."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(resolved.model_uri)
    return list(model.predict(pd.DataFrame(records)))


async def post_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[Any]:
    """POST every body with `concurrency` clients in flight at once; returns the responses."""
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for item in enumerate(bodies):
        queue.put_nowait(item)
    out: list[Any] = [None] * len(bodies)

    async def client() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            while not queue.empty():
                i, body = queue.get_nowait()
                out[i] = await http.post(f"{url}/predict", json=body)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return out


def metric_batches(url: str) -> tuple[float, float]:
    """(model calls, model calls with one record) from the fleet_batch_size histogram."""
    text = httpx.get(f"{url}/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("fleet_batch_size")
    }
    return values["fleet_batch_size_count"], values['fleet_batch_size_bucket{le="1.0"}']


def test_64_concurrent_clients_get_the_pyfunc_answers_in_batches(
    match_server: str, demo_resolved: list[ResolvedModel], demo_uri: str
) -> None:
    resolved = by_name(demo_resolved, MATCH)
    records = random_records(resolved.inputs, 640, seed=3)
    bodies = [{"records": records[i : i + 2]} for i in range(0, 640, 2)]
    calls_before, _ = metric_batches(match_server)

    responses = asyncio.run(post_all(match_server, bodies, concurrency=64))

    assert [r.status_code for r in responses] == [200] * len(bodies)
    got = [p for r in responses for p in r.json()]
    assert got == pytest.approx(reference(resolved, demo_uri, records), rel=1e-12, abs=1e-15)
    calls, _ = metric_batches(match_server)
    # 320 requests of 2 records: batches beyond one request mean fewer calls than requests.
    assert calls - calls_before < len(bodies)
    assert calls - calls_before > 0


def test_batches_of_more_than_one_record_formed(match_server: str) -> None:
    text = httpx.get(f"{match_server}/metrics").text
    assert "fleet_batch_size_bucket" in text
    calls, singles = metric_batches(match_server)
    assert calls > singles  # some model calls held more than one record


def test_one_record_is_one_prediction(
    match_server: str, demo_resolved: list[ResolvedModel], demo_uri: str
) -> None:
    resolved = by_name(demo_resolved, MATCH)
    record = random_records(resolved.inputs, 1, seed=9)[0]
    resp = httpx.post(f"{match_server}/predict", json={"records": [record]})
    assert resp.status_code == 200
    assert resp.json() == pytest.approx(reference(resolved, demo_uri, [record]), rel=1e-12)
    assert isinstance(resp.json()[0], float)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"farevalueinminor": "cheap"}, "farevalueinminor"),
        ({"backtoback": None}, "backtoback"),
        ({"unknown_column": 1.0}, "unknown_column"),
    ],
)
def test_a_bad_record_gets_a_400_naming_the_field(
    match_server: str, demo_resolved: list[ResolvedModel], change: dict[str, Any], field: str
) -> None:
    resolved = by_name(demo_resolved, MATCH)
    good, bad = random_records(resolved.inputs, 2, seed=1)
    bad = {**bad, **change}
    resp = httpx.post(f"{match_server}/predict", json={"records": [good, bad]})
    assert resp.status_code == 400
    assert field in resp.text
    locations = [e["loc"] for e in resp.json()["detail"]]
    assert ["records", 1, field] in locations


def test_a_missing_field_and_an_empty_batch_are_refused(
    match_server: str, demo_resolved: list[ResolvedModel]
) -> None:
    record = random_records(by_name(demo_resolved, MATCH).inputs, 1, seed=2)[0]
    del record["eventtime"]
    resp = httpx.post(f"{match_server}/predict", json={"records": [record]})
    assert resp.status_code == 400
    assert "eventtime" in resp.text
    assert httpx.post(f"{match_server}/predict", json={"records": []}).status_code == 400
    assert httpx.post(f"{match_server}/predict", json={"rows": [record]}).status_code == 400


def test_probes_and_metrics(match_server: str) -> None:
    assert httpx.get(f"{match_server}/livez").status_code == 200
    assert httpx.get(f"{match_server}/readyz").status_code == 200
    metrics = httpx.get(f"{match_server}/metrics")
    assert metrics.status_code == 200
    assert "fleet_batch_size" in metrics.text


def test_typed_inputs_without_batching_match_the_pyfunc_model(
    demand_server: str, demo_resolved: list[ResolvedModel], demo_uri: str
) -> None:
    resolved = by_name(demo_resolved, DEMAND)
    assert {c.type for c in resolved.inputs} == {"long", "double", "boolean"}
    records = random_records(resolved.inputs, 96, seed=5)
    bodies = [{"records": [r]} for r in records]
    responses = asyncio.run(post_all(demand_server, bodies, concurrency=16))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    got = [r.json()[0] for r in responses]
    assert got == pytest.approx(reference(resolved, demo_uri, records), rel=1e-12)
    calls, singles = metric_batches(demand_server)
    assert calls == singles  # batching off: one request, one model call
    wrong = {**records[0], "holiday": "yes"}
    resp = httpx.post(f"{demand_server}/predict", json={"records": [wrong]})
    assert resp.status_code == 400
    assert "holiday" in resp.text
