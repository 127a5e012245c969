"""Profile one model: start its server, wait, warm up, measure idle, load it, measure, judge.

Timeline of one run (the sampler runs throughout, every `sample_interval_s`):
ready -> one warm-up request -> `idle_s` of quiet (idle = median of those samples)
-> the load plan (p95 and peak over the samples from load start to a moment after it)
-> invalid requests -> stop the server.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import httpx

from fleet.host.images import BuildSettings, content_hash
from fleet.host.processes import wait_ready
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from fleet.spec import MemoryPolicy
from profiler.backends import Backend, ProcessBackend, Server
from profiler.cache import ProfileCache
from profiler.gate import ProfileGateError, problems_of
from profiler.load import LoadPlan, LoadResult, check_answer, run_load
from profiler.memory import MIB, MemorySampler, percentile
from profiler.policy import recommend
from profiler.report import LoadStats, MemoryStats, PhaseStats, Report


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
) -> Report:
    """Profile `resolved` and return its report; raises ProfileGateError when the gate fails.

    `registry` is where the process backend (or an image build) reads the model from;
    None when the backend runs an image that holds it already.

    With a `cache`, a report stored under the content hash is returned instead (marked
    `cached`, its recommendation recomputed under the model's current policy).
    """
    opts = options or ProfileOptions()
    policy = resolved.model.settings.memory
    if policy.fixed_mib is not None:
        raise ValueError(f"model '{resolved.name}': memory.fixed_mib is set, nothing to profile")
    digest = content_hash or content_hash_of(resolved, opts.build)
    if cache is not None:
        hit = cache.get(digest)
        if hit is not None:
            return judge(replace(hit, cached=True), policy)
    chosen = make_backend(backend, opts.build) if isinstance(backend, str) else backend
    server = chosen.start(resolved, registry)
    try:
        memory, load = _measure(server, resolved, opts)
        tail = server.log_tail(opts.log_lines) if load.errors else []
    finally:
        server.stop()
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
    report = replace(report, problems=problems_of(report, policy))
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


def _measure(
    server: Server, resolved: ResolvedModel, opts: ProfileOptions
) -> tuple[MemoryStats, LoadStats]:
    with MemorySampler(server.memory_bytes, opts.sample_interval_s) as sampler:
        for _, why in wait_ready([server], opts.ready_timeout_s):
            raise ProfileGateError(
                resolved.name,
                [f"server never ready: {why}"],
                log_tail=server.log_tail(opts.log_lines),
            )
        _warm_up(server, resolved, opts)
        quiet = time.monotonic()
        time.sleep(opts.idle_s)
        start = time.monotonic()
        result = run_load(server.url, resolved.inputs, opts.plan)
        end = time.monotonic()
        # A few more samples: memory freed or grown right after the last answer counts too.
        time.sleep(3 * opts.sample_interval_s)
    if sampler.error is not None or server.exited():
        why = server.exited() or f"memory could not be read ({sampler.error})"
        raise ProfileGateError(
            resolved.name,
            [f"the server died under load: {why}"],
            log_tail=server.log_tail(opts.log_lines),
        )
    idle = sampler.window(quiet, start) or sampler.window(0, start)[-1:]
    loaded = sampler.window(start, end + 3 * opts.sample_interval_s)
    if not idle or not loaded:
        raise RuntimeError(f"model '{resolved.name}': too few memory samples; lower the interval")
    memory = MemoryStats(
        idle_mib=statistics.median(idle) / MIB,
        p95_mib=percentile([float(v) for v in loaded], 95) / MIB,
        peak_mib=max(max(loaded), max(idle)) / MIB,
        samples=len(sampler.values),
        interval_s=opts.sample_interval_s,
        source=server.memory_source,
    ).rounded()
    return memory, load_stats(result, end - start)


def _warm_up(server: Server, resolved: ResolvedModel, opts: ProfileOptions) -> None:
    record = random_records(resolved.inputs, 1, seed=opts.plan.seed)
    try:
        response = httpx.post(
            f"{server.url}/predict", json={"records": record}, timeout=opts.plan.timeout_s
        )
        problem = check_answer(response, 1)
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        raise ProfileGateError(
            resolved.name,
            [f"predictions failed: the warm-up request got {problem}"],
            log_tail=server.log_tail(opts.log_lines),
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
