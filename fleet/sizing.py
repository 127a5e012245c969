"""The sizing policy: from measured memory to a Kubernetes memory request and limit.

    request_mib = ceil(p95 * (1 + request_margin_percent / 100))
    limit_mib   = ceil(max(peak * limit_factor, peak + limit_floor_mib))

`p95` and `peak` are the measured memory under load, in MiB. The limit is never below the
request. A model with `fixed_mib` set is not profiled; request and limit are that number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fleet.spec import MemoryPolicy


@dataclass(frozen=True)
class Recommendation:
    """The memory a model's pod gets, in whole MiB."""

    request_mib: int
    """Kubernetes `resources.requests.memory`, in MiB."""
    limit_mib: int
    """Kubernetes `resources.limits.memory`, in MiB."""

    def to_dict(self) -> dict[str, Any]:
        return {"request_mib": self.request_mib, "limit_mib": self.limit_mib}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Recommendation:
        return Recommendation(
            request_mib=int(data["request_mib"]), limit_mib=int(data["limit_mib"])
        )

    def kubernetes(self) -> dict[str, dict[str, str]]:
        """The `resources` block of a container (memory only)."""
        return {
            "requests": {"memory": f"{self.request_mib}Mi"},
            "limits": {"memory": f"{self.limit_mib}Mi"},
        }


def recommend(p95_mib: float, peak_mib: float, policy: MemoryPolicy) -> Recommendation:
    """Request and limit for a model measured at `p95_mib` / `peak_mib` under `policy`."""
    if policy.fixed_mib is not None:
        return fixed(policy)
    if p95_mib < 0 or peak_mib < 0:
        raise ValueError(f"memory cannot be negative (p95 {p95_mib}, peak {peak_mib})")
    # A tiny epsilon keeps float noise (e.g. 100.00000000001) from adding a whole MiB.
    request = _ceil(p95_mib * (1 + policy.request_margin_percent / 100))
    limit = _ceil(max(peak_mib * policy.limit_factor, peak_mib + policy.limit_floor_mib))
    return Recommendation(request_mib=request, limit_mib=max(limit, request))


def fixed(policy: MemoryPolicy) -> Recommendation:
    """The recommendation of a model whose memory is fixed in models.yaml."""
    if policy.fixed_mib is None:
        raise ValueError("the memory policy has no fixed_mib")
    return Recommendation(request_mib=policy.fixed_mib, limit_mib=policy.fixed_mib)


def _ceil(value: float) -> int:
    return max(1, math.ceil(value - 1e-9))
