"""The router over real HTTP: uvicorn-served router in front of real (small) backends.

The backends here are a few lines of ASGI served by uvicorn on free ports
(`tests.support.echo_backend`): they answer the model server API (`POST /predict
{"records": [...]}` → JSON array) and echo what they received, so tests see exactly what
the router forwarded. The real BentoML model server is in test_router_bentoml.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from fleet.resolved import ResolvedModel
from fleet.routes import RouterLimits, build_routes_config
from fleet.schema import random_records
from fleet.spec import Fleet
from tests.support import Served, Servers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend(servers: Servers) -> Served:
    return servers.echo().start()


@pytest.fixture(scope="module")
def demo_router(
    servers: Servers,
    backend: Served,
    demo_fleet: Fleet,
    demo_resolved: list[ResolvedModel],
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The router for the demo fleet, each model played by the echo backend."""
    config = build_routes_config(
        demo_fleet,
        demo_resolved,
        lambda r: f"{backend.url}/{r.name}",
        limits=RouterLimits(timeout_s=5.0),
    )
    return servers.router(config, tmp_path_factory.mktemp("router") / "routes.json").start().url


def test_every_demo_route_reaches_its_model(
    demo_router: str, demo_resolved: list[ResolvedModel]
) -> None:
    with httpx.Client(base_url=demo_router, timeout=10) as client:
        for r in demo_resolved:
            record, *batch = random_records(r.inputs, 3, seed=r.version)
            one = client.post(r.model.route, json=record)
            assert one.status_code == 200, one.text
            assert one.headers["X-Model"] == r.name
            assert one.headers["X-Model-Version"] == str(r.version)
            assert "X-Variant" not in one.headers
            answer = one.json()
            assert answer["model"] == r.name and answer["version"] == r.version
            assert [p["model"] for p in answer["predictions"]] == [r.name]
            assert answer["predictions"][0]["record"].keys() == record.keys()
            many = client.post(r.model.route, json=[record, *batch]).json()
            assert len(many["predictions"]) == 3
            # Order is kept, and doubles stay doubles even when sent as integers.
            assert [p["record"] for p in many["predictions"]] == [
                {
                    k: float(v)
                    if isinstance(v, int)
                    and not isinstance(v, bool)
                    and any(c.name == k and c.type == "double" for c in r.inputs)
                    else v
                    for k, v in rec.items()
                }
                for rec in [record, *batch]
            ]


def test_experiment_split_and_stickiness(demo_router: str, demo_fleet: Fleet) -> None:
    exp = demo_fleet.experiments[0]
    weights = {v.model: v.weight for v in exp.variants}
    record = {
        "route_decision_score": 0.1,
        "farevalueinminor": 2.0,
        "offer_throughput_rate": 0.3,
        "eventtime": 4.0,
        "backtoback": 0.0,
    }
    n = 1000

    async def run() -> tuple[Counter[str], Counter[str], set[str]]:
        sticky: Counter[str] = Counter()
        anonymous: Counter[str] = Counter()
        async with httpx.AsyncClient(base_url=demo_router, timeout=10) as client:

            async def one(i: int, key: str | None) -> str:
                headers = {exp.sticky_header: key} if key else {}
                resp = await client.post(exp.route, json=record, headers=headers)
                assert resp.status_code == 200, resp.text
                assert resp.headers["X-Variant"] == resp.json()["model"]
                return resp.headers["X-Variant"]

            for start in range(0, n, 50):
                got = await asyncio.gather(*(one(i, f"c{i}") for i in range(start, start + 50)))
                sticky.update(got)
                got = await asyncio.gather(*(one(i, None) for i in range(start, start + 50)))
                anonymous.update(got)
            again = await asyncio.gather(*(one(0, "c7") for _ in range(50)))
        return sticky, anonymous, set(again)

    sticky, anonymous, repeated = asyncio.run(run())
    assert len(repeated) == 1
    for counts in (sticky, anonymous):
        assert sum(counts.values()) == n
        for model, weight in weights.items():
            expected = n * weight / 100
            sd = (n * weight / 100 * (1 - weight / 100)) ** 0.5
            assert abs(counts[model] - expected) < 4 * sd, counts


def test_variants_stay_callable_on_their_own_routes(demo_router: str, demo_fleet: Fleet) -> None:
    routes = {m.name: m.route for m in demo_fleet.models}
    record = {
        "route_decision_score": 0.1,
        "farevalueinminor": 2.0,
        "offer_throughput_rate": 0.3,
        "eventtime": 4.0,
        "backtoback": 0.0,
    }
    for v in demo_fleet.experiments[0].variants:
        resp = httpx.post(demo_router + routes[v.model], json=record, timeout=10)
        assert resp.status_code == 200 and resp.json()["model"] == v.model


def test_metrics_count_requests_by_route_variant_status(demo_router: str) -> None:
    httpx.post(demo_router + "/probability/2/TAXI", json={"bad": 1}, timeout=10)
    text = httpx.get(demo_router + "/metrics", timeout=10).text
    assert (
        'fleet_router_requests_total{route="/probability/2/TAXI",status="200",variant="match_probability_2_TAXI_trafficaware"}'
        in text
    )
    assert 'route="/probability/2/TAXI",status="422"' in text
    assert "fleet_router_request_duration_seconds_bucket" in text
    assert httpx.get(demo_router + "/healthz").json() == {"status": "ok"}
    assert httpx.get(demo_router + "/readyz").status_code == 200
