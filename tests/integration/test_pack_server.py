"""A pack server: the small demo models in one process, each as if it were served alone.

Every model answers under `/models/<name>/` with `pyfunc.predict`'s predictions, refuses
bad input by its own signature, batches on its own and is counted under its own metric
labels; a model that cannot load stops the whole server, naming it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.host.demo_registry import BIG_MODEL
from fleet.host.model_server import pack_command, pack_path
from fleet.host.model_store import ModelStore, model_tag
from fleet.host.processes import free_port
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from fleet.serving.config import ENV_PACK, MLFLOW_FOLDER
from tests.integration.test_predictions import assert_same, pyfunc_answers, served_answers
from tests.support import Served, Servers, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(demo_resolved: list[ResolvedModel]) -> list[ResolvedModel]:
    """Every demo model but the big random forest."""
    return [r for r in demo_resolved if r.name != BIG_MODEL]


def pack_server(
    servers: Servers, models: list[ResolvedModel], store: ModelStore, registry: Registry
) -> Served:
    tagged = [(r, store.import_model(r, registry)) for r in models]
    port = free_port()
    argv, env = pack_command(tagged, port, store)
    return servers.process("pack", argv, port, env)


@pytest.fixture(scope="module")
def pack(
    servers: Servers,
    small: list[ResolvedModel],
    model_store: ModelStore,
    demo_registry: Registry,
) -> Served:
    served = pack_server(servers, small, model_store, demo_registry).launch()
    wait_for([served], timeout_s=300)
    return served


def samples(url: str, name: str) -> dict[str, float]:
    """`name`'s samples on the server's /metrics, keyed by their labels' model."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels["model"]] = sample.value
    return out


def test_every_model_in_the_pack_gets_pyfunc_predict_answers(
    pack: Served, small: list[ResolvedModel], model_store: ModelStore
) -> None:
    assert len(small) >= 10
    for i, resolved in enumerate(small):
        records = random_records(resolved.inputs, 640, seed=200 + i)
        url = pack.url + pack_path(resolved.name)
        got = asyncio.run(served_answers(url, records))
        model_dir = model_store.model_dir(model_tag(resolved)) / MLFLOW_FOLDER
        assert_same(got, pyfunc_answers(model_dir, records))


def test_each_model_validates_batches_and_counts_on_its_own(
    pack: Served, small: list[ResolvedModel]
) -> None:
    match, demand = small[0], next(r for r in small if r.name.startswith("demand"))
    calls_before = samples(pack.url, "fleet_batch_size_count")
    # A record of one model is bad input for the other: the 400 names the other's field.
    record = random_records(match.inputs, 1, seed=1)[0]
    resp = httpx.post(f"{pack.url}{pack_path(demand.name)}/predict", json={"records": [record]})
    assert resp.status_code == 400
    assert ["records", 0, "hour_of_week"] in [e["loc"] for e in resp.json()["detail"]]
    ok = httpx.post(f"{pack.url}{pack_path(match.name)}/predict", json={"records": [record]})
    assert ok.status_code == 200 and len(ok.json()) == 1
    calls = samples(pack.url, "fleet_batch_size_count")
    assert calls[match.name] == calls_before.get(match.name, 0) + 1
    assert calls.get(demand.name, 0) == calls_before.get(demand.name, 0)
    codes = {
        (s.labels["model"], s.labels["code"]): s.value
        for f in text_string_to_metric_families(httpx.get(f"{pack.url}/metrics").text)
        for s in f.samples
        if s.name == "fleet_predict_requests_total"
    }
    assert codes[(demand.name, "400")] >= 1


def test_probes_paths_and_one_process(pack: Served, small: list[ResolvedModel]) -> None:
    for path in ("/livez", "/readyz", f"{pack_path(small[0].name)}/readyz"):
        assert httpx.get(pack.url + path).status_code == 200, path
    resp = httpx.post(f"{pack.url}/models/nobody/predict", json={"records": []})
    assert resp.status_code == 404
    assert "nobody" in resp.json()["error"]
    assert httpx.post(f"{pack.url}/predict", json={"records": []}).status_code == 404
    assert pack.child is not None
    assert psutil.Process(pack.child.pid).children(recursive=True) == []


def test_a_model_that_cannot_load_stops_the_pack_naming_it(
    servers: Servers, small: list[ResolvedModel], model_store: ModelStore, demo_registry: Registry
) -> None:
    served = pack_server(servers, small[:2], model_store, demo_registry)
    entries: list[dict[str, Any]] = json.loads(served.env[ENV_PACK])
    entries[1]["FLEET_MODEL_DIR"] = "/nonexistent/mlflow_model"
    served.env[ENV_PACK] = json.dumps(entries)
    served.launch()
    assert served.child is not None
    assert served.child.proc.wait(timeout=120) == 2
    log = served.child.log_tail(40)
    assert f"cannot serve model '{small[1].name}' from /nonexistent/mlflow_model" in log


def test_a_pack_of_one_model_serves_it_under_its_path(
    servers: Servers, small: list[ResolvedModel], model_store: ModelStore, demo_registry: Registry
) -> None:
    served = pack_server(servers, small[:1], model_store, demo_registry).launch()
    wait_for([served], timeout_s=120)
    record = random_records(small[0].inputs, 1, seed=4)[0]
    body = {"records": [record]}
    path = pack_path(small[0].name)
    assert httpx.post(f"{served.url}{path}/predict", json=body).status_code == 200
    assert httpx.post(f"{served.url}/predict", json=body).status_code == 404
    served.stop()
