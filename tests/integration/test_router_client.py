"""The router's backend client (`fleet.router.proxy.Proxy`) against real TCP servers.

Each test runs a small asyncio HTTP server in the test's own event loop
(`tests.support.backend`) whose misbehaviour it controls (closing idle connections,
answering late, half an answer, chunked answers, garbage) and counts the connections
and requests it saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from fleet.host.processes import free_port
from fleet.router.proxy import BackendError, Proxy
from tests.support import Behaviour, Seen, answer, backend, response

RECORDS = b'[{"x":1.0}]'
ANSWER = b"[0.5]"  # what `answer` answers


def run(behaviour: Behaviour, test: Callable[[Proxy, str, Seen], Awaitable[None]]) -> None:
    async def go() -> None:
        async with backend(behaviour) as (proxy, url, seen):
            await test(proxy, url, seen)

    asyncio.run(go())


def test_connections_are_kept_alive_and_reused() -> None:
    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        for _ in range(50):
            assert await proxy.predict(url, RECORDS, 5) == ANSWER
        assert seen.connections == 1
        assert len(seen.heads) == 50
        assert seen.bodies[0] == b'{"records":[{"x":1.0}]}'

    run(answer, test)


def test_request_line_and_host_header_follow_the_backend_url() -> None:
    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        await proxy.predict(url + "/models/m1/", RECORDS, 5)
        head = seen.heads[0].decode()
        assert head.startswith("POST /models/m1/predict HTTP/1.1\r\n")
        assert f"Host: {url.removeprefix('http://')}\r\n" in head
        assert "Content-Type: application/json\r\n" in head

    run(answer, test)


def test_concurrent_calls_stay_within_the_pool_limit() -> None:
    async def slow_answer(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        writer.write(response(json.dumps([len(seen.bodies)]).encode()))
        return True

    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        results = await asyncio.gather(*(proxy.predict(url, RECORDS, 10) for _ in range(40)))
        assert len(results) == 40 and all(r.startswith(b"[") for r in results)
        assert seen.most_open <= 8  # Proxy(max_connections=8)
        assert seen.connections <= 8

    run(slow_answer, test)


def test_an_idle_connection_the_server_dropped_is_retried_once_on_a_new_one() -> None:
    # The server answers the first request on a connection, then closes the connection
    # without answering when the next request comes (a keep-alive timeout racing it).
    async def one_per_connection(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if n > 1:
            return False
        writer.write(response(ANSWER))
        return True

    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        for _ in range(5):
            assert await proxy.predict(url, RECORDS, 5) == ANSWER
        # Requests 2-5 each went to a used connection that was dropped, then a new one.
        assert seen.connections == 5
        assert len(seen.heads) == 9

    run(one_per_connection, test)


def test_half_an_answer_then_close_is_502_and_not_resent() -> None:
    async def half(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(b"[0.5, 0.25]")[:-4])
        await writer.drain()
        return False

    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        with pytest.raises(BackendError) as err:
            await proxy.predict(url, RECORDS, 5)
        assert err.value.status == 502 and err.value.kind == "transport"
        assert "broke the connection" in err.value.message
        assert len(seen.heads) == 1  # an answered request is never sent twice

    run(half, test)


def test_connection_close_in_the_answer_is_honoured() -> None:
    async def close_after(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(ANSWER, extra=b"Connection: close\r\n"))
        await writer.drain()
        return False

    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        for _ in range(3):
            assert await proxy.predict(url, RECORDS, 5) == ANSWER
        assert seen.connections == 3 and len(seen.heads) == 3  # no failed reuse

    run(close_after, test)


def test_chunked_answers_are_reassembled() -> None:
    async def chunked(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"[0.1,", b" 0.2,", b" 0.3]"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        assert await proxy.predict(url, RECORDS, 5) == b"[0.1, 0.2, 0.3]"
        assert await proxy.predict(url, RECORDS, 5) == b"[0.1, 0.2, 0.3]"
        assert seen.connections == 1

    run(chunked, test)


def test_garbage_answer_is_502() -> None:
    async def garbage(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        return True

    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        with pytest.raises(BackendError) as err:
            await proxy.predict(url, RECORDS, 5)
        assert err.value.status == 502 and "unparsable" in err.value.message

    run(garbage, test)


def test_a_late_answer_never_reaches_the_next_caller() -> None:
    # The first request is answered after its timeout; its connection must not be
    # reused, or the next caller would read the stale answer as its own.
    async def late_first(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if len(seen.heads) == 1:
            await asyncio.sleep(0.3)
            writer.write(response(b'["late"]'))
        else:
            writer.write(response(b'["on time"]'))
        return True

    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        with pytest.raises(BackendError) as err:
            await proxy.predict(url, RECORDS, 0.1)
        assert err.value.status == 504 and "gave no answer in 0.1 s" in err.value.message
        assert await proxy.predict(url, RECORDS, 5) == b'["on time"]'
        await asyncio.sleep(0.4)
        assert await proxy.predict(url, RECORDS, 5) == b'["on time"]'

    run(late_first, test)


def test_refused_connection_is_503() -> None:
    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        closed = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(BackendError) as err:
            await proxy.predict(closed, RECORDS, 5)
        assert err.value.status == 503 and err.value.kind == "connect"
        assert f"cannot connect to model server {closed}" in err.value.message
        assert await proxy.predict(url, RECORDS, 5) == ANSWER

    run(answer, test)


def test_error_statuses_map_to_what_the_caller_gets() -> None:
    async def statuses(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        status, body = [(422, b'{"detail": "x out of range"}'), (503, b"busy"), (200, b"{}")][n - 1]
        writer.write(response(body, status=status))
        return True

    async def test(proxy: Proxy, url: str, seen: Seen) -> None:
        got = []
        for _ in range(3):
            with pytest.raises(BackendError) as err:
                await proxy.predict(url, RECORDS, 5)
            got.append((err.value.status, err.value.kind))
        assert got == [(422, "rejected"), (503, "unavailable"), (502, "bad_response")]

    run(statuses, test)


def test_idle_connections_older_than_keepalive_are_not_reused() -> None:
    async def go() -> None:
        async with backend(answer, keepalive_s=0.05) as (proxy, url, seen):
            await proxy.predict(url, RECORDS, 5)
            await proxy.predict(url, RECORDS, 5)
            assert seen.connections == 1
            await asyncio.sleep(0.1)
            await proxy.predict(url, RECORDS, 5)
            assert seen.connections == 2

    asyncio.run(go())


def test_a_malformed_backend_url_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="http\\(s\\)://host"):
        Proxy().add("ftp://model:21")
