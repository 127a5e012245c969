"""The router in front of a real BentoML model server (fleet.serving, contract 2).

One demo model served by `bentoml serve` as `fleet serve` runs it, the router as
`python -m fleet.router` with the config `build_routes_config` makes: predictions
through the router equal the model server's own, for one record and for a batch.
"""

from __future__ import annotations

import httpx
import pytest

from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.routes import build_routes_config
from fleet.schema import random_records
from fleet.spec import Fleet
from tests.support import Servers, by_name

pytestmark = pytest.mark.slow

MODEL = "demand_forecast_1"


@pytest.fixture(scope="module")
def model_server(
    servers: Servers,
    model_store: ModelStore,
    demo_resolved: list[ResolvedModel],
    demo_registry: Registry,
) -> tuple[ResolvedModel, str]:
    resolved = by_name(demo_resolved, MODEL)
    served = servers.model_server(resolved, model_store, demo_registry).start(timeout_s=240)
    return resolved, served.url


@pytest.fixture(scope="module")
def router(
    servers: Servers,
    model_server: tuple[ResolvedModel, str],
    demo_fleet: Fleet,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    resolved, url = model_server
    config = build_routes_config(demo_fleet.only([MODEL]), [resolved], lambda _: url)
    path = tmp_path_factory.mktemp("router-bentoml") / "routes.json"
    return servers.router(config, path).start().url


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
