"""Shadow traffic: a copy of a route's requests for a candidate model, compared, never answered.

A route (or experiment) with `"shadow": {"model": M, "percent": P}` copies P% of its
valid requests, picked at random, to M's model server, and compares M's predictions with
the ones the caller got. The caller never waits for it: the copy is made after the
caller's answer has been sent, as a task of its own, so a shadow that is slow, down or
failing changes nothing in the caller's status, body, headers or latency.

- At most `limit` shadow calls are in flight per path (`RouterLimits.shadow_calls`); a
  request picked while that many are in flight is not copied and is counted as dropped.
  So a hanging shadow holds a few connections for at most its timeout each, and the
  route's own calls, which go through the coalescer, never wait for it.
- Shadow calls go straight to the proxy, one call per copied request: they are not
  coalesced with the shadow model's own route, and do not take its backend slots.
- Metrics per path and shadow model (fleet/router/metrics.py): calls by outcome, errors
  by kind, drops, latency, and the absolute difference of every pair of numeric
  predictions (`fleet_router_shadow_abs_diff`); predictions that are not numbers and
  differ, or answers of another length, count as mismatches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from fleet.router.metrics import RouterMetrics
from fleet.router.proxy import BackendError, Proxy

log = logging.getLogger("fleet.router")


@dataclass(frozen=True)
class ShadowTarget:
    """Where a path's copies go."""

    model: str
    backend: str
    timeout_s: float
    percent: float
    only: tuple[str, ...] | None
    """Columns to send, when the path's records carry more than the shadow takes."""


class Shadows:
    """The shadow calls of one router: picks, bounds, sends and compares them."""

    def __init__(self, proxy: Proxy, metrics: RouterMetrics, limit: int) -> None:
        self.proxy = proxy
        self.metrics = metrics
        self.limit = limit
        self.in_flight: dict[str, int] = {}
        self.rng = random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    def picked(self, shadow: ShadowTarget) -> bool:
        """Whether this request is one of the shadow's share."""
        return self.rng.random() * 100 < shadow.percent

    def copy(self, path: str, shadow: ShadowTarget, payload: bytes, primary: bytes) -> None:
        """Send `payload` (a JSON array of records) to the shadow in the background and
        compare its answer with `primary` (the JSON array the caller got); dropped and
        counted when `limit` calls of `path` are in flight."""
        busy = self.in_flight.get(path, 0)
        if busy >= self.limit:
            self.metrics.shadow_dropped(path, shadow.model)
            return
        self.in_flight[path] = busy + 1
        task = asyncio.create_task(self._call(path, shadow, payload, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, path: str, shadow: ShadowTarget, payload: bytes, primary: bytes) -> None:
        start = time.perf_counter()
        try:
            content = await self.proxy.predict(shadow.backend, payload, shadow.timeout_s)
        except BackendError as exc:
            self.metrics.shadow_failed(path, shadow.model, exc.kind, time.perf_counter() - start)
            return
        except Exception:
            log.exception("shadow call of %s to %s failed", path, shadow.model)
            self.metrics.shadow_failed(path, shadow.model, "internal", time.perf_counter() - start)
            return
        finally:
            self.in_flight[path] -= 1
        self.metrics.shadow_answered(path, shadow.model, time.perf_counter() - start)
        try:
            diffs, mismatches = differences(json.loads(primary), json.loads(content))
        except ValueError:
            diffs, mismatches = [], 1
        self.metrics.shadow_compared(path, shadow.model, diffs, mismatches)

    async def aclose(self) -> None:
        """Cancel the shadow calls in flight (the router is stopping)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def differences(primary: Any, shadow: Any) -> tuple[list[float], int]:
    """(absolute differences of the numeric predictions, count of other ones that differ).

    Lists are compared element by element (a batch's predictions, a prediction's
    classes); lists of different lengths count as one mismatch per element of the longer.
    """
    if isinstance(primary, list) and isinstance(shadow, list):
        if len(primary) != len(shadow):
            return [], max(len(primary), len(shadow))
        diffs: list[float] = []
        mismatches = 0
        for a, b in zip(primary, shadow, strict=True):
            more, bad = differences(a, b)
            diffs += more
            mismatches += bad
        return diffs, mismatches
    if _number(primary) and _number(shadow):
        return [abs(float(primary) - float(shadow))], 0
    same = type(primary) is type(shadow) and primary == shadow  # True is not 1 here
    return ([0.0], 0) if same else ([], 1)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
