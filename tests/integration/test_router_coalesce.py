"""Requests waiting for the same model server go as one call (`fleet.router.coalesce`).

Against a real TCP server (`tests.support.backend`, as in test_router_client.py) that
answers each record with its `x`, so every caller can check that it got exactly its own
predictions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from fleet.router.coalesce import Coalescer
from fleet.router.proxy import BackendError
from tests.support import Behaviour, Seen, backend, response


def records(*xs: float) -> bytes:
    return json.dumps([{"x": x} for x in xs], separators=(",", ":")).encode()


def sent(seen: Seen) -> list[list[float]]:
    """The x values of every call the server got, in order."""
    return [[r["x"] for r in json.loads(b)["records"]] for b in seen.bodies]


async def echo_x(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
    """One prediction per record (its x) after 20 ms; a batch holding x == 13 is refused."""
    xs = [r["x"] for r in json.loads(seen.bodies[-1])["records"]]
    await asyncio.sleep(0.02)
    if 13.0 in xs:
        writer.write(response(b'{"detail": "x: 13 is out of range"}', status=422))
    else:
        writer.write(response(json.dumps(xs).encode()))
    return True


def run(
    behaviour: Behaviour,
    test: Callable[[Coalescer, str, Seen], Awaitable[None]],
    *,
    max_calls: int = 1,
    max_records: int = 1000,
) -> None:
    async def go() -> None:
        async with backend(behaviour) as (proxy, url, seen):
            await test(Coalescer(proxy, max_calls, max_records), url, seen)

    asyncio.run(go())


def test_an_idle_server_gets_each_request_at_once_and_alone() -> None:
    async def test(backends: Coalescer, url: str, seen: Seen) -> None:
        for x in range(5):
            assert json.loads(await backends.predict(url, records(x), 1, 5)) == [x]
        assert sent(seen) == [[0], [1], [2], [3], [4]]

    run(echo_x, test)


def test_waiting_requests_go_together_and_each_gets_its_own_predictions() -> None:
    async def test(backends: Coalescer, url: str, seen: Seen) -> None:
        calls = [backends.predict(url, records(i + 100, i + 100.5), 2, 5) for i in range(30)]
        answers = await asyncio.gather(*calls)
        assert [json.loads(a) for a in answers] == [[i + 100, i + 100.5] for i in range(30)]
        # The first goes alone; the 29 that came while it was in flight go as one call.
        assert [len(call) for call in sent(seen)] == [2, 58]

    run(echo_x, test)


def test_a_merged_call_holds_at_most_max_records() -> None:
    async def test(backends: Coalescer, url: str, seen: Seen) -> None:
        answers = await asyncio.gather(
            *(backends.predict(url, records(i), 1, 5) for i in range(13))
        )
        assert [json.loads(a) for a in answers] == [[i] for i in range(13)]
        assert [len(call) for call in sent(seen)] == [1, 4, 4, 4]

    run(echo_x, test, max_records=4)


def test_a_refused_merged_call_is_resent_request_by_request() -> None:
    async def test(backends: Coalescer, url: str, seen: Seen) -> None:
        xs = [1.0, 2.0, 13.0, 4.0]
        results = await asyncio.gather(
            *(backends.predict(url, records(x), 1, 5) for x in xs), return_exceptions=True
        )
        refused = results[2]
        assert isinstance(refused, BackendError) and refused.status == 422
        assert "13 is out of range" in refused.message
        assert [json.loads(r) for r in results if isinstance(r, bytes)] == [[1.0], [2.0], [4.0]]
        # 1 alone; 2, 13, 4 together (refused); then each of them alone.
        assert sent(seen)[:2] == [[1.0], [2.0, 13.0, 4.0]]
        assert sorted(sent(seen)[2:]) == [[2.0], [4.0], [13.0]]

    run(echo_x, test)


def test_a_waiting_request_times_out_on_its_own_and_is_never_sent() -> None:
    # The first call is held by the server until the test lets it go; a request that
    # waits behind it must get its 504 at its own timeout, while the first is still held.
    release = asyncio.Event()

    async def held_first(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if len(seen.bodies) == 1:
            await release.wait()
        writer.write(response(b"[0.5]"))
        return True

    async def test(backends: Coalescer, url: str, seen: Seen) -> None:
        first = asyncio.ensure_future(backends.predict(url, records(1), 1, 5))
        while not seen.bodies:  # the first call is in flight
            await asyncio.sleep(0.01)
        with pytest.raises(BackendError) as err:
            await backends.predict(url, records(2), 1, 0.2)
        assert err.value.status == 504
        assert err.value.message == f"model server {url} gave no answer in 0.2 s"
        # It gave up on its own: the call it waited for has not been answered yet, and
        # it was never sent.
        assert not first.done()
        assert sent(seen) == [[1]]
        release.set()
        assert await first == b"[0.5]"
        assert await backends.predict(url, records(3), 1, 5) == b"[0.5]"
        assert sent(seen) == [[1], [3]]

    run(held_first, test)


def test_a_merged_answer_with_the_wrong_count_fails_its_requests_with_502() -> None:
    async def one_answer(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        writer.write(response(b"[0.5]"))
        return True

    async def test(backends: Coalescer, url: str, seen: Seen) -> None:
        results = await asyncio.gather(
            *(backends.predict(url, records(i), 1, 5) for i in range(4)), return_exceptions=True
        )
        assert results[0] == b"[0.5]"
        for r in results[1:]:
            assert isinstance(r, BackendError) and r.status == 502
            assert "answered 1 predictions for 3 records" in r.message

    run(one_answer, test)


def test_max_calls_0_sends_every_request_as_its_own_call() -> None:
    async def test(backends: Coalescer, url: str, seen: Seen) -> None:
        await asyncio.gather(*(backends.predict(url, records(i), 1, 5) for i in range(10)))
        assert sorted(sent(seen)) == [[i] for i in range(10)]

    run(echo_x, test, max_calls=0)
