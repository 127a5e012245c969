"""Backend faults through the real router: refused, hanging, failing, rejecting, restarted.

The router runs as `python -m fleet.router`; the backends are the echo model-server
stand-ins (`tests.support.echo_backend`), each a uvicorn child process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fleet.host.processes import free_port
from tests.support import Served, Servers

pytestmark = pytest.mark.slow

X = [{"name": "x", "type": "double", "required": True}]
HANG_TIMEOUT_S = 0.5


def _route(path: str, model: str, backend: str, timeout_s: float = 5.0) -> dict[str, object]:
    return {
        "path": path,
        "model": model,
        "version": 1,
        "backend": backend,
        "inputs": X,
        "timeout_s": timeout_s,
    }


@pytest.fixture(scope="module")
def rig(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Served]:
    """A router in front of: a healthy backend, one that hangs, one that fails, a port
    nothing listens on, and a backend the tests stop and start again."""
    main = servers.echo().start()
    restartable = servers.echo().start()
    closed = f"http://127.0.0.1:{free_port()}"
    config = {
        "routes": [
            _route("/ok", "m_ok", f"{main.url}/m_ok"),
            _route("/hang", "hang_m", f"{main.url}/hang_m", timeout_s=HANG_TIMEOUT_S),
            _route("/fail", "fail_m", f"{main.url}/fail_m"),
            _route("/refused", "m_gone", closed),
            _route("/restart", "m_restart", f"{restartable.url}/m_restart"),
        ]
    }
    router = servers.router(config, tmp_path_factory.mktemp("faults") / "routes.json").start()
    return {"router": router, "restartable": restartable}


def _post(router: Served, path: str, x: float = 1.0) -> httpx.Response:
    return httpx.post(router.url + path, json={"x": x}, timeout=10)


def _logged(router: Served, resp: httpx.Response) -> str:
    """The router's log line of a failed request, found by its request id."""
    rid = resp.json()["request_id"]
    assert resp.headers["x-request-id"] == rid and len(rid) == 16
    assert router.child is not None
    for _ in range(50):  # the log is written by the router process
        lines = [line for line in router.child.log_lines(200) if rid in line]
        if lines:
            return lines[-1]
        time.sleep(0.1)
    raise AssertionError(f"request {rid} not in the router log")


def test_refused_connection_is_503_logged_under_a_request_id(rig: dict[str, Served]) -> None:
    resp = _post(rig["router"], "/refused")
    assert resp.status_code == 503
    body = resp.json()
    assert body["error"] == "backend_unavailable" and body["model"] == "m_gone"
    # The caller learns what kind of failure; the model server's address is in the log.
    assert body["message"] == "the model server is unavailable; try again later"
    assert "127.0.0.1" not in resp.text
    assert "cannot connect to model server http://127.0.0.1:" in _logged(rig["router"], resp)
    assert _post(rig["router"], "/ok").status_code == 200


def test_backend_4xx_is_passed_on_with_its_message(rig: dict[str, Served]) -> None:
    resp = _post(rig["router"], "/ok", x=13.0)
    assert resp.status_code == 422
    assert resp.json()["error"] == "backend_rejected"
    assert "13 is out of range" in resp.json()["message"]


def test_backend_500_is_502(rig: dict[str, Served]) -> None:
    resp = _post(rig["router"], "/fail")
    assert resp.status_code == 502
    assert resp.json()["message"] == "the model server failed"
    line = _logged(rig["router"], resp)
    assert "answered 500" in line and "model crashed" in line


def test_hanging_backend_is_504_and_other_routes_keep_answering(rig: dict[str, Served]) -> None:
    url = rig["router"].url

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        # The client would wait 10 s; the router must answer long before (the route's
        # timeout is 0.5 s), or this raises ReadTimeout.
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            hang = [client.post("/hang", json={"x": 1.0}) for _ in range(20)]
            ok = [client.post("/ok", json={"x": float(i + 100)}) for i in range(40)]
            results = await asyncio.gather(*hang, *ok)
        return list(results[:20]), list(results[20:])

    hung, fine = asyncio.run(run())
    assert {r.status_code for r in hung} == {504}
    assert hung[0].json()["message"] == "the model server did not answer in time"
    assert f"gave no answer in {HANG_TIMEOUT_S:g} s" in _logged(rig["router"], hung[0])
    assert {r.status_code for r in fine} == {200}
    assert [r.json()["predictions"][0]["record"]["x"] for r in fine] == [
        float(i + 100) for i in range(40)
    ]


def test_stopped_backend_gives_503_only_on_its_routes_and_recovers(rig: dict[str, Served]) -> None:
    router, backend = rig["router"], rig["restartable"]
    assert _post(router, "/restart").status_code == 200  # a pooled connection now exists
    backend.stop()
    try:
        down = [_post(router, "/restart") for _ in range(3)]
        assert {r.status_code for r in down} == {503}, [r.text for r in down]
        assert _post(router, "/ok").status_code == 200
    finally:
        backend.start()
    # The first request after the restart already succeeds: stale pooled connections
    # to the old process are not reused.
    assert _post(router, "/restart").status_code == 200


def test_backend_errors_are_counted_by_kind(rig: dict[str, Served]) -> None:
    _post(rig["router"], "/refused")
    text = httpx.get(rig["router"].url + "/metrics", timeout=10).text
    for kind, model in [("connect", "m_gone"), ("rejected", "m_ok"), ("status", "fail_m")]:
        assert f'fleet_router_backend_errors_total{{kind="{kind}",model="{model}"' in text
    assert 'route="/hang",status="504",variant="hang_m"' in text


def _readiness_until(router: Served, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """GET /readyz until `done(body)`; the router checks model servers every 2 s."""
    body: dict[str, Any] = {}
    for _ in range(100):
        resp = httpx.get(router.url + "/readyz", timeout=10)
        assert resp.status_code == 200, resp.text  # the router serves the other routes
        body = resp.json()
        if done(body):
            return body
        time.sleep(0.2)
    pytest.fail(f"/readyz never got there: {body}")


def test_readyz_names_the_routes_whose_model_server_is_down(rig: dict[str, Served]) -> None:
    router, backend = rig["router"], rig["restartable"]
    # The test before restarted /restart's server: wait for its health check to see it.
    body = _readiness_until(
        router, lambda b: "/refused" in b["down"] and "/restart" not in b["down"]
    )
    assert body["status"] == "degraded"
    assert body["down"]["/refused"].startswith("m_gone: cannot connect")
    assert "/ok" not in body["down"] and "/restart" not in body["down"]
    metrics = httpx.get(router.url + "/metrics", timeout=10).text
    assert 'fleet_router_backend_up{model="m_gone"} 0.0' in metrics
    assert 'fleet_router_backend_up{model="m_ok"} 1.0' in metrics
    backend.stop()
    try:
        body = _readiness_until(router, lambda b: "/restart" in b["down"])
        assert _post(router, "/ok").status_code == 200
    finally:
        backend.start()
    body = _readiness_until(router, lambda b: "/restart" not in b["down"])
    assert set(body["down"]) == {"/refused"}
