"""Requests that wait for the same model server go to it together, as one call.

A model server answers a batch of records in one call about as fast as one record: its
cost is per HTTP request, not per record (docs/benchmarks.md). So the router keeps at
most `max_calls` calls in flight per model server; a request that comes while they are
all busy waits, and when a call returns, every request waiting for that server (up to
`max_records` records) is sent as one call and the answer is split back, one slice
per request. An idle server gets each request at once: no added latency at low load.

- Each request keeps its own route timeout, waiting included (504 past it).
- A call that fails fails its requests with the same error, except a refusal (4xx):
  then each request of the call is sent again on its own, so only the request the model
  server refuses gets the refusal.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import pydantic_core

from fleet.router.proxy import BackendError, Proxy, timeout_error


@dataclass
class _Waiting:
    records: bytes
    """A JSON array of records."""
    count: int
    timeout_s: float
    future: asyncio.Future[bytes]


@dataclass
class _Lane:
    """One model server: calls in flight and the requests waiting for it."""

    in_flight: int = 0
    waiting: deque[_Waiting] = field(default_factory=deque)


class Coalescer:
    """`predict` with at most `max_calls` calls in flight per backend (0: no limit)."""

    def __init__(self, proxy: Proxy, max_calls: int, max_records: int) -> None:
        self.proxy = proxy
        self.max_calls = max_calls
        self.max_records = max_records
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def predict(self, backend: str, records: bytes, count: int, timeout_s: float) -> bytes:
        """The backend's JSON array of `count` predictions for `records` (a JSON array)."""
        if self.max_calls == 0:
            return await self.proxy.predict(backend, records, timeout_s)
        lane = self._lanes.get(backend)
        if lane is None:
            lane = self._lanes[backend] = _Lane()
        if lane.in_flight < self.max_calls and not lane.waiting:
            lane.in_flight += 1
            try:
                return await self.proxy.predict(backend, records, timeout_s)
            finally:
                lane.in_flight -= 1
                self._drain(backend, lane)
        waiting = _Waiting(records, count, timeout_s, asyncio.get_running_loop().create_future())
        lane.waiting.append(waiting)
        self._drain(backend, lane)  # a slot may be free (what waited before has gone)
        try:
            async with asyncio.timeout(timeout_s):
                # A timeout cancels the future: a call not yet sent leaves it out.
                return await waiting.future
        except TimeoutError:
            raise timeout_error(backend, timeout_s) from None

    def _drain(self, backend: str, lane: _Lane) -> None:
        """Send what waits for `backend`, as one call per free slot."""
        while lane.waiting and lane.in_flight < self.max_calls:
            batch: list[_Waiting] = []
            records = 0
            while lane.waiting:
                head = lane.waiting[0]
                if head.future.done():
                    lane.waiting.popleft()
                    continue
                if batch and records + head.count > self.max_records:
                    break
                batch.append(lane.waiting.popleft())
                records += head.count
            if not batch:
                return
            lane.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(backend, lane, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, backend: str, lane: _Lane, batch: list[_Waiting]) -> None:
        try:
            if len(batch) == 1:
                await self._alone(backend, batch[0])
                return
            merged = b"[" + b",".join(w.records[1:-1] for w in batch) + b"]"
            answer = await self.proxy.predict(backend, merged, max(w.timeout_s for w in batch))
            _split(backend, batch, answer)
        except BackendError as exc:
            if exc.kind == "rejected" and len(batch) > 1:
                await asyncio.gather(*(self._alone(backend, w) for w in batch))
            else:
                for w in batch:
                    _fail(w, exc)
        except Exception as exc:  # every waiting request must get an answer
            for w in batch:
                _fail(w, exc)
        finally:
            lane.in_flight -= 1
            self._drain(backend, lane)

    async def _alone(self, backend: str, w: _Waiting) -> None:
        try:
            _settle(w, await self.proxy.predict(backend, w.records, w.timeout_s))
        except BackendError as exc:
            _fail(w, exc)


def _split(backend: str, batch: list[_Waiting], answer: bytes) -> None:
    """Hand each request its slice of the answer to their merged call."""
    try:
        values = pydantic_core.from_json(answer)
    except ValueError:
        values = None
    total = sum(w.count for w in batch)
    if not isinstance(values, list) or len(values) != total:
        got = f"{len(values)} predictions" if isinstance(values, list) else "no JSON array"
        message = f"model server {backend} answered {got} for {total} records"
        raise BackendError(502, "backend_error", message, "bad_response")
    start = 0
    for w in batch:
        _settle(w, pydantic_core.to_json(values[start : start + w.count]))
        start += w.count


def _settle(w: _Waiting, answer: bytes) -> None:
    if not w.future.done():
        w.future.set_result(answer)


def _fail(w: _Waiting, exc: Exception) -> None:
    if not w.future.done():
        w.future.set_exception(exc)
