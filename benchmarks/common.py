"""Shared benchmark helpers: an async HTTP load generator and PSS of a process tree.

from benchmarks.common import run_load, pss_mib
result = run_load("http://127.0.0.1:3000/predict", bodies, concurrency=16, duration_s=10)
print(result.rps, result.p50_ms, result.p99_ms, result.errors)
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import ssl
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    concurrency: int
    requests: int
    ok: int
    errors: int
    seconds: float
    rps: float
    """Successful requests per second."""
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    """Count per HTTP status (or exception name) of the failed requests."""

    def row(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "errors": self.errors,
            "requests": self.requests,
        }


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


async def _load(
    url: str,
    bodies: Sequence[Any],
    concurrency: int,
    duration_s: float | None,
    count: int | None,
    timeout_s: float,
    headers: dict[str, str] | None,
) -> LoadResult:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    sent = itertools.count()
    cycle = itertools.cycle(bodies)
    # One client (one keep-alive connection) per worker: a shared httpx pool spends time
    # quadratic in its size assigning requests to connections, which at 64 connections
    # makes the load generator, not the server, the bottleneck.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            if deadline is not None and time.perf_counter() >= deadline:
                return
            if count is not None and next(sent) >= count:
                return
            t0 = time.perf_counter()
            try:
                resp = await client.post(url, json=next(cycle), headers=headers)
                if resp.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures[str(resp.status_code)] += 1
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1

    # Clients are made before the clock starts and share one TLS context: httpx builds a
    # context (loading the CA bundle) per client, tens of ms each on a busy machine.
    tls = _tls_context()
    clients = [
        httpx.AsyncClient(limits=limits, timeout=timeout_s, verify=tls) for _ in range(concurrency)
    ]
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else None
    try:
        await asyncio.gather(*(worker(client) for client in clients))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    seconds = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    errors = sum(failures.values())
    return LoadResult(
        concurrency=concurrency,
        requests=len(ms) + errors,
        ok=len(ms),
        errors=errors,
        seconds=seconds,
        rps=len(ms) / seconds if seconds > 0 else 0.0,
        p50_ms=_percentile(ms, 50),
        p99_ms=_percentile(ms, 99),
        statuses=dict(failures),
    )


def run_load(
    url: str,
    bodies: Sequence[Any],
    *,
    concurrency: int,
    duration_s: float | None = None,
    count: int | None = None,
    timeout_s: float = 30.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST `bodies` (cycled, as JSON) to `url` from `concurrency` clients.

    Runs for `duration_s` seconds or until `count` requests were sent (give one).
    """
    if (duration_s is None) == (count is None):
        raise ValueError("give exactly one of duration_s and count")
    return asyncio.run(_load(url, bodies, concurrency, duration_s, count, timeout_s, headers))


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pss_mib(pid: int) -> float:
    """PSS (proportional set size) summed over `pid` and its descendants, in MiB.

    PSS splits shared pages among the processes that share them, so the sum over a tree
    is what the tree really costs (RSS would count shared libraries once per process).
    """
    total = 0
    for proc in process_tree(pid):
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / (1024 * 1024)
