"""Profile one model: start its server, wait, warm up, measure idle, load it, measure, judge.

Timeline of one run (the sampler runs throughout, every `sample_interval_s`):
ready -> one warm-up request -> `idle_s` of quiet (idle = median of those samples)
-> the load plan (p95 and peak over the samples from load start to a moment after it)
-> invalid requests -> stop the server.

With `pack=True` a second run follows on a pack server that serves the model twice, under
its name and `<name>--twin` (`profiler.backends.copy_names`): both copies warmed up, idle
measured, the load plan run against one copy and then the other, p95 and peak over both.
What the second copy adds to the private memory of the model's own server is its marginal
cost in a pack (`PackStats.of`); both runs sample private memory besides the usual probe.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from fleet.host.images import BuildSettings, content_hash
from fleet.host.processes import wait_ready
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from fleet.sizing import recommend
from fleet.spec import MemoryPolicy
from profiler.backends import Backend, ProcessBackend, Server
from profiler.cache import ProfileCache
from profiler.gate import ProfileGateError, problems_of, twin_problems
from profiler.load import MAX_KEPT_ERRORS, LoadPlan, LoadResult, check_answer, run_load
from profiler.memory import MIB, MemorySampler, percentile
from profiler.report import LoadStats, MemoryStats, PackStats, PhaseStats, Report


@dataclass(frozen=True)
class ProfileOptions:
    """How one model is profiled."""

    plan: LoadPlan = field(default_factory=LoadPlan)
    """The requests sent under load."""
    ready_timeout_s: float = 180.0
    """Longest wait for the server's GET /readyz to answer 200."""
    sample_interval_s: float = 0.1
    """Seconds between two memory samples."""
    idle_s: float = 2.0
    """Quiet seconds after the warm-up request over which idle memory is measured."""
    log_lines: int = 30
    """Server log lines quoted when the gate fails."""
    build: BuildSettings | None = None
    """Build settings for the content hash and the docker backend's image (default: defaults)."""


def content_hash_of(resolved: ResolvedModel, build: BuildSettings | None = None) -> str:
    """The model image's content hash (`fleet.host.images`), the key of the report cache."""
    return content_hash(resolved, build or BuildSettings())


def make_backend(name: str, build: BuildSettings | None = None) -> Backend:
    """`process` or `docker` (which builds or reuses the model image)."""
    if name == "process":
        return ProcessBackend()
    if name == "docker":
        from profiler.docker import DockerBackend, built_image

        return DockerBackend(built_image(build))
    raise ValueError(f"unknown backend '{name}' (use process or docker)")


def profile(
    resolved: ResolvedModel,
    registry: Registry | None,
    *,
    backend: Backend | str = "process",
    options: ProfileOptions | None = None,
    content_hash: str | None = None,
    cache: ProfileCache | None = None,
    pack: bool = False,
) -> Report:
    """Profile `resolved` and return its report; raises ProfileGateError when the gate fails.

    `registry` is where the process backend (or an image build) reads the model from;
    None when the backend runs an image that holds it already.

    With `pack`, a second server holds the model twice in one pack server (the backend's
    `start(..., copies=2)`), and `report.pack` says what the model costs in a pack; the
    twin run's load is held to the gate too. It runs only when the model's own run passed.

    With a `cache`, a report stored under the content hash is returned instead (marked
    `cached`, its recommendation recomputed under the model's current policy); with
    `pack`, only a stored report that measured the pack will do.
    """
    opts = options or ProfileOptions()
    policy = resolved.model.settings.memory
    if policy.fixed_mib is not None:
        raise ValueError(f"model '{resolved.name}': memory.fixed_mib is set, nothing to profile")
    digest = content_hash or content_hash_of(resolved, opts.build)
    if cache is not None:
        hit = cache.get(digest)
        if hit is not None and (hit.pack is not None or not pack):
            return judge(replace(hit, cached=True), policy)
    chosen = make_backend(backend, opts.build) if isinstance(backend, str) else backend
    single = _run(chosen, resolved, registry, opts, private=pack)
    memory, load, tail = single.memory, single.load, single.tail
    report = Report(
        model=resolved.name,
        version=resolved.version,
        model_uri=resolved.model_uri,
        content_hash=digest,
        backend=chosen.name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        memory=memory,
        load=load,
        policy=policy.model_dump(),
        recommendation=recommend(memory.p95_mib, memory.peak_mib, policy),
    )
    twin_load = None
    if pack and not problems_of(report, policy):
        try:
            twin = _run(chosen, resolved, registry, opts, copies=2, private=True)
        except ProfileGateError as exc:
            raise ProfileGateError(
                exc.model, twin_problems(exc.problems), log_tail=exc.log_tail
            ) from exc
        assert single.private is not None and twin.private is not None
        report = replace(report, pack=PackStats.of(memory, single.private, twin.private))
        twin_load, tail = twin.load, tail or twin.tail
    report = replace(report, problems=problems_of(report, policy, twin_load))
    if cache is not None:
        cache.put(report)
    if not report.passed:
        raise ProfileGateError(resolved.name, report.problems, log_tail=tail, report=report)
    return report


def judge(report: Report, policy: MemoryPolicy) -> Report:
    """A cached report under the current policy (margins or the ceiling may have changed)."""
    rec = recommend(report.memory.p95_mib, report.memory.peak_mib, policy)
    report = replace(report, policy=policy.model_dump(), recommendation=rec)
    report = replace(report, problems=problems_of(report, policy))
    if not report.passed:
        raise ProfileGateError(report.model, report.problems, report=report)
    return report


@dataclass(frozen=True)
class Measured:
    """What one server run measured."""

    memory: MemoryStats
    """The server's memory, by the backend's probe (`Server.memory_bytes`)."""
    load: LoadStats
    tail: list[str]
    """The server's last log lines when a request failed."""
    private: MemoryStats | None = None
    """Its private memory (`Server.private_bytes`), when asked for: the pack comparison."""


def _run(
    backend: Backend,
    resolved: ResolvedModel,
    registry: Registry | None,
    opts: ProfileOptions,
    copies: int = 1,
    private: bool = False,
) -> Measured:
    """Start a server of `copies` of the model, measure it (its private memory too, with
    `private`), stop it."""
    # A backend of one model (written before pack servers) is asked the way it was then.
    if copies == 1:
        server = backend.start(resolved, registry)
    else:
        server = backend.start(resolved, registry, copies=copies)
    try:
        measured = _measure(server, resolved, opts, private)
        tail = server.log_tail(opts.log_lines) if measured.load.errors else []
    finally:
        server.stop()
    return replace(measured, tail=tail)


def _measure(
    server: Server, resolved: ResolvedModel, opts: ProfileOptions, private: bool = False
) -> Measured:
    """Warm up, idle and load every copy of the model `server` serves (one after the
    other), sampling its memory throughout (and its private memory, with `private`)."""
    interval = opts.sample_interval_s
    samplers = [MemorySampler(server.memory_bytes, interval)]
    if private:
        samplers.append(MemorySampler(server.private_bytes, interval))
    with contextlib.ExitStack() as running:
        for sampler in samplers:
            running.enter_context(sampler)
        for _, why in wait_ready([server], opts.ready_timeout_s):
            raise ProfileGateError(
                resolved.name,
                [f"server never ready: {why}"],
                log_tail=server.log_tail(opts.log_lines),
            )
        urls = server.model_urls
        for url in urls:
            _warm_up(server, url, resolved, opts, named=len(urls) > 1)
        quiet = time.monotonic()
        time.sleep(opts.idle_s)
        start = time.monotonic()
        result = _merged({url: run_load(url, resolved.inputs, opts.plan) for url in urls})
        end = time.monotonic()
        # A few more samples: memory freed or grown right after the last answer counts too.
        time.sleep(3 * interval)
    error = next((s.error for s in samplers if s.error is not None), None)
    if error is not None or server.exited():
        why = server.exited() or f"memory could not be read ({error})"
        raise ProfileGateError(
            resolved.name,
            [f"the server died under load: {why}"],
            log_tail=server.log_tail(opts.log_lines),
        )
    window = (quiet, start, end + 3 * interval)
    stats = [_memory_stats(s, window, resolved, interval) for s in samplers]
    return Measured(
        memory=replace(stats[0], source=server.memory_source),
        load=load_stats(result, end - start),
        tail=[],
        private=replace(stats[1], source=server.private_source) if private else None,
    )


def _memory_stats(
    sampler: MemorySampler,
    window: tuple[float, float, float],
    resolved: ResolvedModel,
    interval_s: float,
) -> MemoryStats:
    """Idle (median of the quiet samples), p95 and peak (of the samples under load)."""
    quiet, start, end = window
    idle = sampler.window(quiet, start) or sampler.window(0, start)[-1:]
    loaded = sampler.window(start, end)
    if not idle or not loaded:
        raise RuntimeError(f"model '{resolved.name}': too few memory samples; lower the interval")
    return MemoryStats(
        idle_mib=statistics.median(idle) / MIB,
        p95_mib=percentile([float(v) for v in loaded], 95) / MIB,
        peak_mib=max(max(loaded), max(idle)) / MIB,
        samples=len(sampler.values),
        interval_s=interval_s,
        source="",
    ).rounded()


def _warm_up(
    server: Server, url: str, resolved: ResolvedModel, opts: ProfileOptions, named: bool
) -> None:
    record = random_records(resolved.inputs, 1, seed=opts.plan.seed)
    try:
        response = httpx.post(
            f"{url}/predict", json={"records": record}, timeout=opts.plan.timeout_s
        )
        problem = check_answer(response, 1)
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        where = f" to {urlsplit(url).path}" if named else ""
        raise ProfileGateError(
            resolved.name,
            [f"predictions failed: the warm-up request{where} got {problem}"],
            log_tail=server.log_tail(opts.log_lines),
        )


def _merged(results: dict[str, LoadResult]) -> LoadResult:
    """One result of the load runs against several copies (keyed by URL): their phases one
    after the other, errors and accepted invalid requests marked with the copy's path."""
    if len(results) == 1:
        return next(iter(results.values()))

    def marked(url: str, what: list[str]) -> list[str]:
        return [f"{urlsplit(url).path}: {w}" for w in what]

    errors = [e for url, r in results.items() for e in marked(url, r.first_errors)]
    return LoadResult(
        phases=[p for r in results.values() for p in r.phases],
        first_errors=errors[:MAX_KEPT_ERRORS],
        invalid_sent=sum(r.invalid_sent for r in results.values()),
        invalid_accepted=[a for url, r in results.items() for a in marked(url, r.invalid_accepted)],
    )


def load_stats(result: LoadResult, elapsed_s: float) -> LoadStats:
    """Summary of a load run: totals, latency percentiles over all phases, each phase."""
    latencies = [ms for p in result.phases for ms in p.latencies_ms]
    phases = [
        PhaseStats(
            concurrency=p.concurrency,
            batch_size=p.batch_size,
            requests=p.requests,
            errors=p.errors,
            req_per_s=round(p.requests / p.elapsed_s, 1) if p.elapsed_s > 0 else 0.0,
            p50_ms=_pct(p.latencies_ms, 50),
            p99_ms=_pct(p.latencies_ms, 99),
        )
        for p in result.phases
    ]
    busy = sum(p.elapsed_s for p in result.phases) or elapsed_s
    return LoadStats(
        duration_s=round(elapsed_s, 2),
        requests=result.requests,
        records=sum(p.requests * p.batch_size for p in result.phases),
        errors=result.errors,
        req_per_s=round(result.requests / busy, 1) if busy > 0 else 0.0,
        p50_ms=_pct(latencies, 50),
        p99_ms=_pct(latencies, 99),
        first_errors=result.first_errors,
        phases=phases,
        invalid_sent=result.invalid_sent,
        invalid_accepted=result.invalid_accepted,
    )


def _pct(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 2) if values else None
