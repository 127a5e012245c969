"""The router over real HTTP: uvicorn-served router in front of real (small) backends.

The backends here are a few lines of ASGI served by uvicorn on free ports: they answer
the model server API (`POST /predict {"records": [...]}` → JSON array) and echo what
they received, so tests see exactly what the router forwarded. `Served` and
`echo_backend` are shared with the other router test files. The real BentoML model
server is in test_router_bentoml.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleet.local import free_port
from fleet.registry import ResolvedModel

from fleet.routes import RouterLimits, build_routes_config
from fleet.schema import random_records
from fleet.spec import Fleet
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


class Served:
    """A server in a child process on 127.0.0.1:port, restartable on the same port.

    Child processes, not threads: a router, a backend and a load loop sharing one
    interpreter's GIL slow each other down by orders of magnitude.
    """

    def __init__(self, argv: list[str], port: int) -> None:
        self.argv = argv
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def asgi(target: str, port: int | None = None) -> Served:
        """uvicorn serving `module:attribute`."""
        port = port or free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "1",
        ]
        return Served(argv, port)

    @staticmethod
    def router(config: dict[str, Any], path: Path, port: int | None = None) -> Served:
        """`python -m fleet.router` with `config` written to `path`."""
        path.write_text(json.dumps(config))
        port = port or free_port()
        argv = [
            sys.executable,
            "-m",
            "fleet.router",
            "--config",
            str(path),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        return Served(argv, port)

    def start(self, timeout_s: float = 60) -> Served:
        self.proc = subprocess.Popen(self.argv, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.argv} did not listen on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


async def echo_backend(scope: Any, receive: Any, send: Any) -> None:
    """A stand-in model server. The first path segment names the model it plays:

    `hang*` never answers, `fail*` answers 500; a record with x == 13 gets a 422 the
    way a model server refuses a record; otherwise one prediction per record:
    {"model": <segment>, "record": <the record as received>}.
    """
    assert scope["type"] == "http"
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    model = scope["path"].strip("/").split("/")[0]
    status, out = 200, b""
    if scope["method"] != "POST":
        out = b'{"status": "ok"}'  # a probe
    elif model.startswith("hang"):
        await asyncio.sleep(3600)
    elif model.startswith("fail"):
        status, out = 500, b'{"detail": "model crashed"}'
    else:
        records = json.loads(body)["records"]
        if any(r.get("x") == 13.0 for r in records):
            status, out = 422, json.dumps({"detail": "records.0.x: 13 is out of range"}).encode()
        else:
            out = json.dumps([{"model": model, "record": r} for r in records]).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture(scope="module")
def backend() -> Iterator[Served]:
    served = Served.asgi("tests.integration.test_router:echo_backend").start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def demo_router(
    backend: Served,
    demo_fleet: Fleet,
    demo_resolved: list[ResolvedModel],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The router for the demo fleet, each model played by the echo backend."""
    config = build_routes_config(
        demo_fleet,
        demo_resolved,
        lambda r: f"{backend.url}/{r.name}",
        limits=RouterLimits(timeout_s=5.0),
    )
    router = Served.router(config, tmp_path_factory.mktemp("router") / "routes.json").start()
    try:
        yield router.url
    finally:
        router.stop()


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
