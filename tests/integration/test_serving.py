"""Real model servers (`python -OO -m fleet.serving`) on demo models: answers, batching,
validation, probes, one process each."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
import mlflow.pyfunc
import pandas as pd
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.host.model_store import ModelStore, model_tag
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from tests.support import Servers, by_name, wait_for

pytestmark = pytest.mark.slow

MATCH = "match_probability_1_TAXI_trafficaware"
DEMAND = "demand_forecast_1"


def unbatched(resolved: ResolvedModel) -> ResolvedModel:
    settings = resolved.model.settings
    off = settings.model_copy(
        update={"batching": settings.batching.model_copy(update={"enabled": False})}
    )
    return replace(resolved, model=resolved.model.model_copy(update={"settings": off}))


@pytest.fixture(scope="module")
def servers_by_model(
    servers: Servers,
    model_store: ModelStore,
    demo_resolved: list[ResolvedModel],
    demo_registry: Registry,
) -> dict[str, str]:
    """Both servers, started together (their start-ups overlap): the logistic regression
    with batching on (max batch 64), the decision tree (long, double and boolean inputs)
    with batching off."""
    wanted = [by_name(demo_resolved, MATCH), unbatched(by_name(demo_resolved, DEMAND))]
    started = [servers.model_server(r, model_store, demo_registry).launch() for r in wanted]
    wait_for(started, timeout_s=240)
    return {s.name: s.url for s in started}


@pytest.fixture(scope="module")
def match_server(servers_by_model: dict[str, str]) -> str:
    return servers_by_model[MATCH]


@pytest.fixture(scope="module")
def demand_server(servers_by_model: dict[str, str]) -> str:
    return servers_by_model[DEMAND]


def reference(resolved: ResolvedModel, store: ModelStore, records: list[dict[str, Any]]) -> Any:
    """The MLflow pyfunc model's own predictions for `records`, from its imported copy."""
    model = mlflow.pyfunc.load_model(str(store.model_dir(model_tag(resolved)) / "mlflow_model"))
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
    calls = singles = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "fleet_batch_size_count":
                calls += sample.value
            elif sample.name == "fleet_batch_size_bucket" and sample.labels["le"] == "1.0":
                singles += sample.value
    return calls, singles


def test_64_concurrent_clients_get_the_pyfunc_answers_in_batches(
    match_server: str, demo_resolved: list[ResolvedModel], model_store: ModelStore
) -> None:
    resolved = by_name(demo_resolved, MATCH)
    records = random_records(resolved.inputs, 640, seed=3)
    bodies = [{"records": records[i : i + 2]} for i in range(0, 640, 2)]
    calls_before, _ = metric_batches(match_server)

    responses = asyncio.run(post_all(match_server, bodies, concurrency=64))

    assert [r.status_code for r in responses] == [200] * len(bodies)
    got = [p for r in responses for p in r.json()]
    assert got == pytest.approx(reference(resolved, model_store, records), rel=1e-12, abs=1e-15)
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
    match_server: str, demo_resolved: list[ResolvedModel], model_store: ModelStore
) -> None:
    resolved = by_name(demo_resolved, MATCH)
    record = random_records(resolved.inputs, 1, seed=9)[0]
    resp = httpx.post(f"{match_server}/predict", json={"records": [record]})
    assert resp.status_code == 200
    assert resp.json() == pytest.approx(reference(resolved, model_store, [record]), rel=1e-12)
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
    assert f'fleet_predict_requests_total{{code="200",model="{MATCH}"}}' in metrics.text
    assert f'fleet_model_info{{model="{MATCH}",path="pyfunc-unchecked"}} 1.0' in metrics.text


def test_wrong_method_path_and_oversized_body(match_server: str) -> None:
    assert httpx.get(f"{match_server}/predict").status_code == 405
    assert httpx.post(f"{match_server}/nowhere", json={}).status_code == 404
    big = b'{"records": [' + b" " * (16 * 2**20) + b"]}"
    resp = httpx.post(f"{match_server}/predict", content=big, timeout=30)
    assert resp.status_code == 413
    assert "16777216 bytes" in resp.json()["error"]


def test_one_process_per_server(servers_by_model: dict[str, str], servers: Servers) -> None:
    # No supervisor watching a worker: the server is the process the host started.
    for child in servers.supervisor.children:
        assert psutil.Process(child.pid).children(recursive=True) == []


def test_typed_inputs_without_batching_match_the_pyfunc_model(
    demand_server: str, demo_resolved: list[ResolvedModel], model_store: ModelStore
) -> None:
    resolved = by_name(demo_resolved, DEMAND)
    assert {c.type for c in resolved.inputs} == {"long", "double", "boolean"}
    records = random_records(resolved.inputs, 96, seed=5)
    bodies = [{"records": [r]} for r in records]
    responses = asyncio.run(post_all(demand_server, bodies, concurrency=16))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    got = [r.json()[0] for r in responses]
    assert got == pytest.approx(reference(resolved, model_store, records), rel=1e-12)
    calls, singles = metric_batches(demand_server)
    assert calls == singles  # batching off: one request, one model call
    wrong = {**records[0], "holiday": "yes"}
    resp = httpx.post(f"{demand_server}/predict", json={"records": [wrong]})
    assert resp.status_code == 400
    assert "holiday" in resp.text
