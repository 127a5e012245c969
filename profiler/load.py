"""The load driver: random valid requests from the signature, and invalid ones.

Valid requests are `POST /predict` with `{"records": [...]}` built by
`fleet.schema.random_records`. A plan is a grid of phases, each concurrency times each
batch size, run one after the other for an equal share of the duration (or of the
request count). A valid request counts as failed unless it gets a 200 with a JSON array
holding one prediction per record. Invalid requests must get a 4xx.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from fleet.schema import Column, random_records

MAX_KEPT_ERRORS = 5


@dataclass(frozen=True)
class LoadPlan:
    """What the load driver sends to one model server."""

    duration_s: float | None = 10.0
    """Seconds of load over all phases together (ignored when `requests` is set)."""
    requests: int | None = None
    """Valid requests over all phases together, instead of a duration."""
    concurrencies: tuple[int, ...] = (1, 4, 16)
    """Requests in flight at once, one phase each."""
    batch_sizes: tuple[int, ...] = (1, 16)
    """Records per request: 1 is a single record, more is a batch; one phase each."""
    seed: int = 0
    """Seed of the random records (the same records for the same seed)."""
    timeout_s: float = 30.0
    """Timeout of one request."""

    def __post_init__(self) -> None:
        if self.duration_s is None and self.requests is None:
            raise ValueError("give a load duration or a request count")
        if not self.concurrencies or min(self.concurrencies) < 1:
            raise ValueError("concurrencies must be positive")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch sizes must be positive")

    def phases(self) -> list[tuple[int, int]]:
        """(concurrency, batch size) of each phase, in order."""
        return [(c, b) for b in self.batch_sizes for c in self.concurrencies]


@dataclass
class PhaseResult:
    """What one phase measured."""

    concurrency: int
    batch_size: int
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class LoadResult:
    """All phases, the first few errors, and the invalid requests that were accepted."""

    phases: list[PhaseResult]
    first_errors: list[str]
    invalid_sent: int = 0
    invalid_accepted: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.phases)

    @property
    def errors(self) -> int:
        return sum(p.errors for p in self.phases)


def check_answer(response: httpx.Response, records: int) -> str | None:
    """Why a valid request's answer is wrong, or None when it is right."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    try:
        body = response.json()
    except ValueError:
        return f"HTTP 200 but the body is not JSON: {response.text[:300]}"
    if not isinstance(body, list) or len(body) != records:
        got = f"{len(body)} items" if isinstance(body, list) else type(body).__name__
        return f"HTTP 200 but expected a JSON array of {records} predictions, got {got}"
    return None


def invalid_requests(columns: list[Column]) -> list[tuple[str, bytes]]:
    """(description, body) of requests a model server must refuse with a 4xx."""
    good = random_records(columns, 1, seed=1)[0]
    out: list[tuple[str, bytes]] = []
    required = [c for c in columns if c.required]
    if required:
        missing = {k: v for k, v in good.items() if k != required[0].name}
        out.append((f"required field '{required[0].name}' missing", _body([missing])))
    if columns:
        col = columns[0]
        wrong: Any = 12345 if col.type == "string" else "not-a-" + col.type
        out.append((f"field '{col.name}' of the wrong type", _body([{**good, col.name: wrong}])))
    out.append(("no records", _body([])))
    out.append(("a body that is not JSON", b'{"records": [{'))
    return out


def _body(records: list[dict[str, Any]]) -> bytes:
    return json.dumps({"records": records}).encode()


def run_load(base_url: str, columns: list[Column], plan: LoadPlan) -> LoadResult:
    """Run every phase of `plan` against `base_url`, then the invalid requests."""
    return asyncio.run(_run(base_url.rstrip("/"), columns, plan))


async def _run(base_url: str, columns: list[Column], plan: LoadPlan) -> LoadResult:
    pool = random_records(columns, max(256, 4 * max(plan.batch_sizes)), seed=plan.seed)
    phases = plan.phases()
    limits = httpx.Limits(max_connections=max(plan.concurrencies), max_keepalive_connections=None)
    result = LoadResult(phases=[], first_errors=[])
    async with httpx.AsyncClient(
        base_url=base_url, timeout=plan.timeout_s, limits=limits
    ) as client:
        for i, (concurrency, batch) in enumerate(phases):
            phase = PhaseResult(concurrency=concurrency, batch_size=batch)
            count = None if plan.requests is None else _share(plan.requests, len(phases), i)
            duration = None if plan.requests is not None else plan.duration_s
            seconds = None if duration is None else duration / len(phases)
            await _phase(client, pool, phase, seconds, count, result.first_errors)
            result.phases.append(phase)
        for what, body in invalid_requests(columns):
            result.invalid_sent += 1
            headers = {"content-type": "application/json"}
            try:
                response = await client.post("/predict", content=body, headers=headers)
            except httpx.HTTPError as exc:
                result.invalid_accepted.append(f"{what}: no answer ({type(exc).__name__})")
                continue
            if not 400 <= response.status_code < 500:
                result.invalid_accepted.append(f"{what}: got HTTP {response.status_code}")
    return result


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


async def _phase(
    client: httpx.AsyncClient,
    pool: list[dict[str, Any]],
    phase: PhaseResult,
    seconds: float | None,
    count: int | None,
    first_errors: list[str],
) -> None:
    counter = itertools.count()
    start = time.monotonic()
    deadline = None if seconds is None else start + seconds

    async def worker() -> None:
        while True:
            n = next(counter)
            if (count is not None and n >= count) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                return
            offset = (n * phase.batch_size) % len(pool)
            records = (pool[offset:] + pool[:offset])[: phase.batch_size]
            sent = time.perf_counter()
            try:
                response = await client.post("/predict", json={"records": records})
                problem = check_answer(response, len(records))
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            phase.requests += 1
            if problem is None:
                phase.latencies_ms.append((time.perf_counter() - sent) * 1000)
            else:
                phase.errors += 1
                if len(first_errors) < MAX_KEPT_ERRORS:
                    first_errors.append(problem)

    await asyncio.gather(*(worker() for _ in range(phase.concurrency)))
    phase.elapsed_s = time.monotonic() - start
