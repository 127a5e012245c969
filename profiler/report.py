"""The profile report of one model: JSON for machines, a summary line for people.

The JSON layout is documented in the `profiler` package docstring; `SCHEMA` is bumped
whenever it changes, and reports of another schema are not read from the cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from profiler.policy import Recommendation

SCHEMA = 1


@dataclass(frozen=True)
class MemoryStats:
    """Memory of the server in MiB: idle after warm-up, and the p95 and peak under load."""

    idle_mib: float
    p95_mib: float
    peak_mib: float
    samples: int
    interval_s: float
    source: str

    def rounded(self) -> MemoryStats:
        return replace(
            self,
            idle_mib=round(self.idle_mib, 1),
            p95_mib=round(self.p95_mib, 1),
            peak_mib=round(self.peak_mib, 1),
        )


@dataclass(frozen=True)
class PhaseStats:
    """One load phase: `concurrency` requests in flight, `batch_size` records each."""

    concurrency: int
    batch_size: int
    requests: int
    errors: int
    req_per_s: float
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class LoadStats:
    """Valid requests over all phases, and the invalid ones that were checked."""

    duration_s: float
    requests: int
    records: int
    errors: int
    req_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    first_errors: list[str] = field(default_factory=list)
    phases: list[PhaseStats] = field(default_factory=list)
    invalid_sent: int = 0
    invalid_accepted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """Everything one profile run measured and what it recommends."""

    model: str
    version: int
    model_uri: str
    content_hash: str
    backend: str
    created: str
    memory: MemoryStats
    load: LoadStats
    policy: dict[str, Any]
    recommendation: Recommendation
    problems: list[str] = field(default_factory=list)
    cached: bool = False
    """True when this report came from the cache (not stored in the JSON)."""

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cached")
        data["schema"] = SCHEMA
        data["recommendation"] = self.recommendation.to_dict()
        data["passed"] = self.passed
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Report:
        """A report from its JSON form; raises ValueError on another schema or shape."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"report schema {data.get('schema')!r}, expected {SCHEMA}")
        try:
            load = dict(data["load"])
            load["phases"] = [PhaseStats(**p) for p in load.get("phases", [])]
            return Report(
                model=str(data["model"]),
                version=int(data["version"]),
                model_uri=str(data["model_uri"]),
                content_hash=str(data["content_hash"]),
                backend=str(data["backend"]),
                created=str(data["created"]),
                memory=MemoryStats(**data["memory"]),
                load=LoadStats(**load),
                policy=dict(data["policy"]),
                recommendation=Recommendation.from_dict(data["recommendation"]),
                problems=list(data.get("problems", [])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a profile report: {exc}") from exc

    def summary(self) -> str:
        """One line: model, memory, latency, throughput, recommendation, verdict."""
        m, ld, r = self.memory, self.load, self.recommendation
        lat = f"p50 {_ms(ld.p50_ms)} p99 {_ms(ld.p99_ms)}"
        verdict = "ok" if self.passed else "FAILED"
        origin = " (cached)" if self.cached else ""
        return (
            f"{self.model} v{self.version}{origin}: memory idle {m.idle_mib:.0f} / p95 "
            f"{m.p95_mib:.0f} / peak {m.peak_mib:.0f} MiB; {ld.requests} requests "
            f"{ld.req_per_s:.0f} req/s {lat} errors {ld.errors}; "
            f"request {r.request_mib}Mi limit {r.limit_mib}Mi; {verdict}"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def summary_table(reports: list[Report]) -> str:
    """A fixed-width table of several reports, one row each."""
    head = (
        "model",
        "idle",
        "p95",
        "peak",
        "req/s",
        "p50ms",
        "p99ms",
        "err",
        "request",
        "limit",
        "gate",
    )
    rows = [head]
    for rep in reports:
        m, ld, r = rep.memory, rep.load, rep.recommendation
        rows.append(
            (
                rep.model + (" *" if rep.cached else ""),
                f"{m.idle_mib:.0f}",
                f"{m.p95_mib:.0f}",
                f"{m.peak_mib:.0f}",
                f"{ld.req_per_s:.0f}",
                "-" if ld.p50_ms is None else f"{ld.p50_ms:.1f}",
                "-" if ld.p99_ms is None else f"{ld.p99_ms:.1f}",
                str(ld.errors),
                f"{r.request_mib}Mi",
                f"{r.limit_mib}Mi",
                "ok" if rep.passed else "FAILED",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    note = "\n(memory in MiB; * = from the cache)" if any(r.cached for r in reports) else ""
    return "\n".join(lines) + note
