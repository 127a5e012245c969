"""A small asyncio micro-batcher: concurrent requests share one model call.

Why not BentoML's own dispatcher: it learns a latency model from recent batches and
answers 503 once a request's estimated wait exceeds `max_latency_ms`; at concurrency 64
it collapses into 503s and stays slow after the load is gone (docs/benchmarks.md). This
batcher has no learned state and never refuses work:

- The model runs on the event loop itself, one call at a time. While it runs, new
  requests wait in the socket buffers; when it returns, the loop reads them all, each
  joins the queue, and the next call takes up to `max_batch_size` records from it, oldest
  first. An idle model starts at once, so a lone request pays no batching delay.
- Only when concurrency has been seen (the previous call held more than one request) and
  just one request is waiting does the batcher wait for company, for at most
  `max_latency_ms` and never longer than the previous model call took.

Why on the loop and not in a thread: a small model's call is mostly Python (pandas,
scikit-learn's checks), which holds the GIL anyway; handing each call to a thread and its
answer back costs about 0.5 ms per request at concurrency 1, and the two threads' GIL
handoffs lengthen the tail under load (docs/benchmarks.md, "Model server"). The cost: a
probe waits for the call in progress, a few milliseconds for the models this serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Records = list[dict[str, Any]]
Predict = Callable[[Records], list[Any]]


@dataclass
class _Job:
    records: Records
    future: asyncio.Future[list[Any]]


@dataclass
class MicroBatcher:
    """Groups `submit` calls into calls of `predict` over at most `max_batch_size` records."""

    predict: Predict
    max_batch_size: int = 64
    max_latency_ms: int = 20
    on_batch: Callable[[int], None] = lambda size: None
    """Called with the number of records of every model call (for metrics)."""
    _queue: deque[_Job] = field(default_factory=deque)
    _wake: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None
    _last_jobs: int = 1
    _last_seconds: float = 0.0

    async def submit(self, records: Records) -> list[Any]:
        """Predictions for `records`, computed together with other waiting requests."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())
        job = _Job(records, loop.create_future())
        self._queue.append(job)
        assert self._wake is not None
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if len(self._queue) == 1 and self._last_jobs > 1:
                    await self._wait_for_company()
                jobs = self._take()
                records = [r for job in jobs for r in job.records]
                started = time.perf_counter()
                try:
                    out = self.predict(records)
                except Exception as exc:  # the requests of this batch get the error
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                finally:
                    self._last_seconds = time.perf_counter() - started
                    self._last_jobs = len(jobs)
                self.on_batch(len(records))
                _hand_out(jobs, out)

    async def _wait_for_company(self) -> None:
        assert self._wake is not None
        timeout = min(self.max_latency_ms / 1000.0, self._last_seconds)
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _take(self) -> list[_Job]:
        jobs = [self._queue.popleft()]
        size = len(jobs[0].records)
        while self._queue and size + len(self._queue[0].records) <= self.max_batch_size:
            job = self._queue.popleft()
            size += len(job.records)
            jobs.append(job)
        return jobs

    def close(self) -> None:
        """Stop taking work."""
        if self._task is not None:
            self._task.cancel()


def _hand_out(jobs: Sequence[_Job], out: list[Any]) -> None:
    start = 0
    for job in jobs:
        end = start + len(job.records)
        if not job.future.done():  # the client may have gone away
            job.future.set_result(out[start:end])
        start = end
