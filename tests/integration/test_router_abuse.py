"""What a client can hold of a running router (`python -m fleet.router`): bounded.

Raw sockets against the router process with small limits (so the suite takes seconds):
oversized and too many headers, heads and bodies sent too slowly, idle connections,
stalled uploads past the bytes the router may hold, a pipelining flood, a client that
pipelines and hangs up. Each asserts the status, that the connection is closed, that
normal requests keep answering, and for the uploads a bound on the router's memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import Served, Servers, metric_samples, until

LIMITS = {
    "max_body_bytes": 262_144,
    "header_bytes": 4096,
    "header_count": 20,
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "buffered_body_bytes": 1_048_576,
    "pipelined": 4,
    "client_connections": 100,
    "timeout_s": 2.0,
}
RECORD = b'{"x": 1.5}'


@pytest.fixture(scope="module")
def router(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Served:
    echo = servers.echo().start().url
    columns = [{"name": "x", "type": "double", "required": True}]
    routes = [
        {"path": f"/{m}", "model": m, "version": 1, "backend": f"{echo}/{m}", "inputs": columns}
        for m in ("ok", "hang")
    ]
    config: dict[str, Any] = {"version": 1, "limits": LIMITS, "routes": routes}
    path: Path = tmp_path_factory.mktemp("abuse") / "routes.json"
    return servers.router(config, path).start()


def post(path: str, body: bytes = RECORD, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), extra, len(body), body)
    )


async def _answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of one answer; (0, b"") when the connection closed first."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError:
        return 0, b""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(head[9:12]), await reader.readexactly(length)


async def _closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """Whether the router closes the connection within `timeout` (reading what is left)."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except (TimeoutError, ConnectionError):
        return False
    return True


def run(router: Served, scenario: Callable[[int], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario(router.port))


def _normal_request_answers(router: Served) -> None:
    resp = httpx.post(
        router.url + "/ok", content=RECORD, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (b"X-Big: " + b"a" * 8000 + b"\r\n", "headers_too_large"),
        (b"".join(b"X-H%d: v\r\n" % i for i in range(30)), "headers_too_many"),
    ],
)
def test_an_oversized_head_is_431_and_closed(router: Served, extra: bytes, error: str) -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/ok", extra=extra))
        status, body = await _answer(reader)
        assert (status, json.loads(body)["error"]) == (431, error)
        assert await _closed(reader)
        writer.close()

    run(router, scenario)
    _normal_request_answers(router)


def test_a_head_sent_too_slowly_is_408_and_closed(router: Served) -> None:
    async def scenario(port: int) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        writer.write(b"POST /ok HTTP/1.1\r\nHost: r\r\n")

        async def trickle() -> None:  # one header byte every 0.2 s: a slowloris
            for _ in range(25):
                writer.write(b"X")
                await asyncio.sleep(0.2)

        slowloris = asyncio.create_task(trickle())
        status, body = await _answer(reader)
        slowloris.cancel()
        assert (status, json.loads(body)["error"]) == (408, "head_timeout")
        assert await _closed(reader)
        writer.close()
        return time.monotonic() - start

    assert run(router, scenario) < LIMITS["header_timeout_s"] + 1.5


def test_idle_connections_are_closed_and_those_past_the_limit_shed(router: Served) -> None:
    async def first_bytes(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(reader.read(100), timeout)
        except TimeoutError:
            return None  # still open, nothing said

    async def scenario(port: int) -> tuple[list[bytes | None], list[bool]]:
        opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(150)]
        said = await asyncio.gather(*(first_bytes(r, 0.5) for r, _ in opened))
        idle = [r for (r, _), first in zip(opened, said, strict=True) if first is None]
        closed = await asyncio.gather(*(_closed(r, timeout=3.0) for r in idle))
        for _, writer in opened:
            writer.close()
        return list(said), list(closed)

    said, closed = run(router, scenario)
    shed = [s for s in said if s is not None]
    # Past client_connections (100): 503 at once; the others held until the head timeout.
    assert len(shed) >= 50 and all(s.startswith(b"HTTP/1.1 503") for s in shed), shed[:3]
    assert len(closed) >= 90 and all(closed)
    _normal_request_answers(router)


def test_a_stalled_upload_is_408_and_closed(router: Served) -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = post("/ok", body=b"")[: -len(b"Content-Length: 0\r\n\r\n")]
        writer.write(head + b"Content-Length: 100000\r\n\r\n" + b"[" + b" " * 999)
        status, body = await _answer(reader)
        assert (status, json.loads(body)["error"]) == (408, "body_timeout")
        assert await _closed(reader)
        writer.close()

    run(router, scenario)


def test_stalled_uploads_hold_no_more_than_the_body_budget(router: Served) -> None:
    assert router.child is not None
    process = psutil.Process(router.child.pid)
    before = process.memory_info().rss
    declared = 200_000  # each upload declares 200 kB and sends most of it, then stalls

    async def scenario(port: int) -> tuple[list[int], int, float]:
        async def upload() -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = b"POST /ok HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            writer.write(head + b"Content-Length: %d\r\n\r\n[" % declared + b" " * 150_000)
            status, _ = await _answer(reader)
            writer.close()
            return status

        uploads = [asyncio.create_task(upload()) for _ in range(60)]
        await asyncio.sleep(0.5)
        peak = process.memory_info().rss
        # A normal request still gets through while they stall.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/ok"))
        status, _ = await _answer(reader)
        writer.close()
        return list(await asyncio.gather(*uploads)), status, (peak - before) / 2**20

    statuses, normal, grown_mib = run(router, scenario)
    # 1 MiB may be held: 5 uploads of 200 kB are read (and time out), the rest get 503.
    assert statuses.count(408) == 5 and statuses.count(503) == 55, statuses
    assert normal == 200
    # 60 x 150 kB would be 9 MB read and kept; the router held about 1 MB of it.
    assert grown_mib < 8, grown_mib


def test_a_pipelining_flood_closes_the_connection(router: Served) -> None:
    async def scenario(port: int) -> tuple[int, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/hang") + post("/ok") * 50)
        answers = 0
        while (await _answer(reader, timeout=5.0))[0]:
            answers += 1
        closed = reader.at_eof()
        writer.close()
        return answers, closed

    answers, closed = run(router, scenario)
    assert closed and answers == 0  # the hanging first request was never answered
    _normal_request_answers(router)


def test_a_client_that_pipelines_and_hangs_up_is_499_without_a_traceback(router: Served) -> None:
    async def scenario(port: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/hang") + post("/ok") * 2)  # the first waits for its backend
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    for _ in range(5):
        run(router, scenario)
    key = (("route", "/hang"), ("status", "499"), ("variant", "hang"))

    def counted() -> dict[tuple[tuple[str, str], ...], float]:
        return metric_samples(router.url, "fleet_router_requests_total")

    # The hanging calls end at the route's timeout (5 s), then count their requests.
    assert until(lambda: counted().get(key) == 5, 10), counted()
    _normal_request_answers(router)
    assert router.child is not None
    log = router.child.log_tail(200)
    assert "Traceback" not in log, log
