"""A/B variant choice: pure functions over a stable hash.

A sticky key (the value of an experiment's sticky header) is hashed with SHA-256
together with the experiment's path to a point in [0, BUCKETS). Variants own
consecutive ranges of points, sized by their weights, in the order the config lists
them. The same key therefore lands on the same variant in every router process, and
changing weights from 50/50 to 60/40 moves only the keys in the range that changes
hands (10% of them), not half. Requests without a key get a random point.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

BUCKETS = 10_000
# Weights are whole percentages, so each percent is this many points.
_PER_PERCENT = BUCKETS // 100


def sticky_point(path: str, key: str) -> int:
    """The point in [0, BUCKETS) of `key` in the experiment at `path` (stable everywhere)."""
    # The path is part of the hash so that one caller's variants in two experiments
    # are independent.
    digest = hashlib.sha256(f"{path}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Split:
    """Variants of one experiment with the upper bound of each one's range of points."""

    models: tuple[str, ...]
    bounds: tuple[int, ...]

    @staticmethod
    def of(weights: Sequence[tuple[str, int]]) -> Split:
        """From (model, weight in percent) pairs whose weights sum to 100."""
        total = sum(w for _, w in weights)
        if total != 100 or any(w < 0 for _, w in weights):
            raise ValueError(f"weights must be non-negative and sum to 100, not {total}")
        bounds: list[int] = []
        upper = 0
        for _, weight in weights:
            upper += weight * _PER_PERCENT
            bounds.append(upper)
        return Split(tuple(m for m, _ in weights), tuple(bounds))

    def at(self, point: int) -> str:
        """The variant that owns `point`."""
        # bisect_right skips zero-weight variants: their bound equals the previous one.
        return self.models[bisect.bisect_right(self.bounds, point)]

    def choose(self, path: str, key: str | None, rng: random.Random) -> str:
        """The variant for a request: by `key` when given, else at random by weight."""
        point = sticky_point(path, key) if key else rng.randrange(BUCKETS)
        return self.at(point)
