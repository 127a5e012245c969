"""Profile many models: bounded parallelism, progress lines, the cache, fixed-memory models.

Every model gets an `Outcome`: `profiled` (measured now), `cached` (a passing report under
its content hash was found), `fixed` (`memory.fixed_mib` set, not profiled) or `failed`
(the gate failed, or something broke; `error` says what).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.sizing import Recommendation, fixed
from profiler.backends import Backend
from profiler.cache import ProfileCache
from profiler.gate import ProfileGateError
from profiler.report import Report
from profiler.run import ProfileOptions, content_hash_of, profile

Status = Literal["profiled", "cached", "fixed", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one model of a fleet-wide run."""

    model: str
    status: Status
    recommendation: Recommendation | None = None
    report: Report | None = None
    error: str | None = None

    def line(self) -> str:
        if self.report is not None and self.status in ("profiled", "cached"):
            return self.report.summary()
        if self.status == "fixed" and self.recommendation is not None:
            return (
                f"{self.model}: memory fixed at {self.recommendation.request_mib} MiB, not profiled"
            )
        return f"{self.model}: FAILED\n{self.error}"


def profile_fleet(
    models: list[ResolvedModel],
    registry: Registry | None,
    *,
    backend: Backend | str = "process",
    options: ProfileOptions | None = None,
    parallel: int = 2,
    cache: ProfileCache | None = None,
    hash_of: Callable[[ResolvedModel], str] | None = None,
    progress: Callable[[str], None] = print,
    pack: bool = False,
) -> list[Outcome]:
    """Profile `models`, at most `parallel` at once; outcomes in the order of `models`.

    With `pack`, each model's cost in a pack server is measured too (`profile`'s `pack`).
    """
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    opts = options or ProfileOptions()
    digest = hash_of or (lambda r: content_hash_of(r, opts.build))
    done = 0
    lock = threading.Lock()

    def one(resolved: ResolvedModel) -> Outcome:
        outcome = _one(resolved, registry, backend, opts, cache, digest, pack)
        nonlocal done
        with lock:
            done += 1
            progress(f"[{done}/{len(models)}] {outcome.line()}")
        return outcome

    measured = sum(1 for m in models if m.model.settings.memory.fixed_mib is None)
    progress(
        f"profiling {measured} of {len(models)} models ({len(models) - measured} with fixed "
        f"memory), {min(parallel, max(measured, 1))} at a time"
    )
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="profile") as pool:
        return list(pool.map(one, models))


def _one(
    resolved: ResolvedModel,
    registry: Registry | None,
    backend: Backend | str,
    opts: ProfileOptions,
    cache: ProfileCache | None,
    digest: Callable[[ResolvedModel], str],
    pack: bool,
) -> Outcome:
    policy = resolved.model.settings.memory
    if policy.fixed_mib is not None:
        return Outcome(resolved.name, "fixed", recommendation=fixed(policy))
    try:
        report = profile(
            resolved,
            registry,
            backend=backend,
            options=opts,
            content_hash=digest(resolved),
            cache=cache,
            pack=pack,
        )
    except ProfileGateError as exc:
        return Outcome(resolved.name, "failed", report=exc.report, error=str(exc))
    except Exception as exc:  # one broken model must not stop the others
        return Outcome(resolved.name, "failed", error=f"{type(exc).__name__}: {exc}")
    status: Status = "cached" if report.cached else "profiled"
    return Outcome(resolved.name, status, recommendation=report.recommendation, report=report)
