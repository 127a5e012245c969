"""The deploy gate: a model that fails it must not ship.

It fails when the server never becomes ready, when any valid request fails (the model's
predictions failed), when an invalid request is accepted, or when measured memory is
above the policy's `ceiling_mib`. With the pack measurement, the same holds for the twin
run (the model served twice in one pack server), its problems marked `TWIN_RUN`; its
memory is not held to the ceiling, which is the model's alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fleet.errors import FleetError
from fleet.sizing import Recommendation, recommend
from fleet.spec import MemoryPolicy

if TYPE_CHECKING:
    from profiler.report import LoadStats, MemoryStats, Report

TWIN_RUN = "in the twin pack run"
"""How problems of the pack measurement's second server begin."""


class ProfileGateError(FleetError):
    """A model failed the profile gate; the message says why, with the server's last log lines."""

    def __init__(
        self,
        model: str,
        problems: Sequence[str],
        *,
        log_tail: Sequence[str] = (),
        report: Report | None = None,
    ) -> None:
        lines = [f"model '{model}' failed the profile gate:"]
        lines += [f"  - {p}" for p in problems]
        if log_tail:
            lines.append("  last lines of the server log:")
            lines += [f"    | {line}" for line in log_tail]
        super().__init__(lines)
        # The gate's own reasons, without the header and log (reports and tests read them).
        self.problems = list(problems)
        self.model = model
        self.log_tail = list(log_tail)
        self.report = report


def load_problems(load: LoadStats) -> list[str]:
    """Failed valid requests and accepted invalid ones."""
    problems: list[str] = []
    if load.errors:
        first = load.first_errors[0] if load.first_errors else "no detail"
        problems.append(
            f"predictions failed: {load.errors} of {load.requests} valid requests failed "
            f"(first: {first})"
        )
    problems += [f"an invalid request was accepted: {what}" for what in load.invalid_accepted]
    return problems


def memory_problems(memory: MemoryStats, policy: MemoryPolicy) -> list[str]:
    """Memory above the ceiling."""
    return _ceiling_problems(memory.peak_mib, policy)


def _ceiling_problems(peak_mib: float, policy: MemoryPolicy) -> list[str]:
    if peak_mib > policy.ceiling_mib:
        return [
            f"memory peak {peak_mib:.0f} MiB is above the ceiling of "
            f"{policy.ceiling_mib} MiB (memory.ceiling_mib)"
        ]
    return []


def rederive(model: str, p95_mib: float, peak_mib: float, policy: MemoryPolicy) -> Recommendation:
    """Request and limit for a stored measurement under `policy` (`fleet.sizing`).

    Raises ProfileGateError when the peak is above the policy's ceiling. The Pulumi
    component calls this when only a model's memory policy changed.
    """
    problems = _ceiling_problems(peak_mib, policy)
    if problems:
        raise ProfileGateError(model, problems)
    return recommend(p95_mib, peak_mib, policy)


def problems_of(
    report: Report, policy: MemoryPolicy, twin_load: LoadStats | None = None
) -> list[str]:
    """Every reason `report` fails the gate under `policy` (empty when it passes), and
    those of the twin run's load (`twin_load`, when the pack was measured)."""
    problems = load_problems(report.load) + memory_problems(report.memory, policy)
    if twin_load is not None:
        problems += twin_problems(load_problems(twin_load))
    return problems


def twin_problems(problems: Sequence[str]) -> list[str]:
    """`problems` of the twin run, marked as such."""
    return [f"{TWIN_RUN}: {p}" for p in problems]
