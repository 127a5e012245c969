"""The profile report of one model: JSON for machines, a summary line for people.

The JSON layout is documented in the `profiler` package docstring; `SCHEMA` is bumped
whenever it changes, and reports of another schema are not read from the cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fleet.sizing import Recommendation

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
class PackStats:
    """What the model costs in a pack server, in MiB (docs/profiler.md, "Pack measurement").

    From a second run that serves the model twice in one pack server: the marginal cost is
    what the second copy adds to the model's own server (never below 0), the baseline is
    the rest of the model's own server: the process and the libraries the model loads.
    """

    baseline_idle_mib: float
    baseline_p95_mib: float
    baseline_peak_mib: float
    marginal_idle_mib: float
    marginal_p95_mib: float
    marginal_peak_mib: float
    source: str = ""
    """The memory the two runs were compared by (the server's private memory, such as
    `uss (process tree)`); the baseline is in the report's `memory.source`."""

    @staticmethod
    def of(
        single: MemoryStats, single_private: MemoryStats, twin_private: MemoryStats
    ) -> PackStats:
        """Per statistic x (idle, p95, peak): `marginal_x = max(twin_x - single_x, 0)` with
        both the servers' private memory, and `baseline_x = single_x - marginal_x`.

        `single` is the model's own server as the report measures it; the comparison is of
        private memory (`Server.private_bytes`), which other processes on the machine do
        not move between the two runs as they move PSS.
        """
        marginal = {
            k: max(getattr(twin_private, k) - getattr(single_private, k), 0.0)
            for k in ("idle_mib", "p95_mib", "peak_mib")
        }
        return PackStats(
            baseline_idle_mib=round(single.idle_mib - marginal["idle_mib"], 1),
            baseline_p95_mib=round(single.p95_mib - marginal["p95_mib"], 1),
            baseline_peak_mib=round(single.peak_mib - marginal["peak_mib"], 1),
            marginal_idle_mib=round(marginal["idle_mib"], 1),
            marginal_p95_mib=round(marginal["p95_mib"], 1),
            marginal_peak_mib=round(marginal["peak_mib"], 1),
            source=twin_private.source,
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
    pack: PackStats | None = None
    """The model's cost in a pack server, when the profile measured it (`pack=True`)."""
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
                # absent from reports written before pack measurement existed
                pack=PackStats(**data["pack"]) if data.get("pack") is not None else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a profile report: {exc}") from exc

    def summary(self) -> str:
        """One line: model, memory, latency, throughput, recommendation, verdict."""
        m, ld, r = self.memory, self.load, self.recommendation
        lat = f"p50 {_ms(ld.p50_ms)} p99 {_ms(ld.p99_ms)}"
        verdict = "ok" if self.passed else "FAILED"
        origin = " (cached)" if self.cached else ""
        pack = ""
        if self.pack is not None:
            p = self.pack
            pack = (
                f"in a pack: baseline p95 {p.baseline_p95_mib:.0f} / peak "
                f"{p.baseline_peak_mib:.0f} MiB + {p.marginal_p95_mib:.1f} / "
                f"{p.marginal_peak_mib:.1f} MiB per model; "
            )
        return (
            f"{self.model} v{self.version}{origin}: memory idle {m.idle_mib:.0f} / p95 "
            f"{m.p95_mib:.0f} / peak {m.peak_mib:.0f} MiB; {ld.requests} requests "
            f"{ld.req_per_s:.0f} req/s {lat} errors {ld.errors}; {pack}"
            f"request {r.request_mib}Mi limit {r.limit_mib}Mi; {verdict}"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def summary_table(reports: list[Report]) -> str:
    """A fixed-width table of several reports, one row each; with the pack columns
    (baseline and marginal p95 and peak) when any report measured them."""
    packed = any(rep.pack is not None for rep in reports)
    head = ("model", "idle", "p95", "peak", "req/s", "p50ms", "p99ms", "err", "request", "limit")
    pack_head = ("base p95", "base peak", "+p95", "+peak") if packed else ()
    rows = [(*head, *pack_head, "gate")]
    for rep in reports:
        m, ld, r = rep.memory, rep.load, rep.recommendation
        row = (
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
        )
        rows.append((*row, *_pack_cells(rep.pack, packed), "ok" if rep.passed else "FAILED"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    notes = ["memory in MiB"] if packed or any(r.cached for r in reports) else []
    if packed:
        notes.append("base/+ = the server with the model's libraries / what one more copy adds")
    if any(r.cached for r in reports):
        notes.append("* = from the cache")
    return "\n".join(lines) + ("\n(" + "; ".join(notes) + ")" if notes else "")


def _pack_cells(pack: PackStats | None, packed: bool) -> tuple[str, ...]:
    if not packed:
        return ()
    if pack is None:
        return ("-", "-", "-", "-")
    return (
        f"{pack.baseline_p95_mib:.0f}",
        f"{pack.baseline_peak_mib:.0f}",
        f"{pack.marginal_p95_mib:.1f}",
        f"{pack.marginal_peak_mib:.1f}",
    )
