"""Prometheus metrics of the router, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNMATCHED = "(unmatched)"
# Loopback hops are sub-millisecond; model calls reach seconds under overload.
# Predictions of two versions of a model: from identical (0) to far apart.
DIFF_BUCKETS = (0.0, 1e-9, 1e-6, 1e-4, 0.001, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0, 100.0)
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouterMetrics:
    """Requests by route, variant and status; latency; backend errors; shadow calls."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fleet_router_requests",
            "Requests answered, by route, serving model (variant) and HTTP status "
            "(499: the client left before its answer).",
            ["route", "variant", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fleet_router_request_duration_seconds",
            "Time from request to response in the router, by route and variant.",
            ["route", "variant"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.backend_errors = Counter(
            "fleet_router_backend_errors",
            "Failed model server calls, by route, model and kind "
            "(connect, timeout, transport, rejected, unavailable, status, bad_response).",
            ["route", "model", "kind"],
            registry=self.registry,
        )
        self.up = Gauge(
            "fleet_router_backend_up",
            "1 when the model's server answered its last health check (GET /readyz), else 0.",
            ["model"],
            registry=self.registry,
        )

        self.shadow_calls = Counter(
            "fleet_router_shadow_calls",
            "Copies of a route's requests sent to its shadow model, by outcome (ok, error).",
            ["route", "shadow", "outcome"],
            registry=self.registry,
        )
        self.shadow_errors = Counter(
            "fleet_router_shadow_errors",
            "Failed shadow calls, by route, shadow model and kind (as backend errors, "
            "and internal).",
            ["route", "shadow", "kind"],
            registry=self.registry,
        )
        self.shadow_drops = Counter(
            "fleet_router_shadow_dropped",
            "Requests picked for the shadow but not copied: the route's shadow calls in "
            "flight were at the limit (shadow_calls).",
            ["route", "shadow"],
            registry=self.registry,
        )
        self.shadow_latency = Histogram(
            "fleet_router_shadow_duration_seconds",
            "Time of a shadow call, answered or failed.",
            ["route", "shadow"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.shadow_diff = Histogram(
            "fleet_router_shadow_abs_diff",
            "Absolute difference between each numeric prediction the caller got and the "
            "shadow model's for the same record.",
            ["route", "shadow"],
            buckets=DIFF_BUCKETS,
            registry=self.registry,
        )
        self.shadow_mismatches = Counter(
            "fleet_router_shadow_mismatches",
            "Predictions that are not numbers and differ from the shadow's, or answers "
            "of another length (one per prediction).",
            ["route", "shadow"],
            registry=self.registry,
        )

        # The children of each label set, looked up once (`labels()` takes a lock and
        # builds its key on every call).
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, variant: str, status: int, seconds: float) -> None:
        key = (route, variant, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, variant, str(status)),
                self.latency.labels(route, variant),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def backend_error(self, route: str, model: str, kind: str) -> None:
        self.backend_errors.labels(route, model, kind).inc()

    def backend_up(self, model: str, up: bool) -> None:
        self.up.labels(model).set(1 if up else 0)

    def shadow_dropped(self, route: str, shadow: str) -> None:
        self.shadow_drops.labels(route, shadow).inc()

    def shadow_failed(self, route: str, shadow: str, kind: str, seconds: float) -> None:
        self.shadow_calls.labels(route, shadow, "error").inc()
        self.shadow_errors.labels(route, shadow, kind).inc()
        self.shadow_latency.labels(route, shadow).observe(seconds)

    def shadow_answered(self, route: str, shadow: str, seconds: float) -> None:
        self.shadow_calls.labels(route, shadow, "ok").inc()
        self.shadow_latency.labels(route, shadow).observe(seconds)

    def shadow_compared(self, route: str, shadow: str, diffs: list[float], mismatches: int) -> None:
        histogram = self.shadow_diff.labels(route, shadow)
        for diff in diffs:
            histogram.observe(diff)
        if mismatches:
            self.shadow_mismatches.labels(route, shadow).inc(mismatches)

    def render(self) -> bytes:
        return generate_latest(self.registry)
