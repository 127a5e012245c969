"""Prometheus metrics of the router, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNMATCHED = "(unmatched)"
# Loopback hops are sub-millisecond; model calls reach seconds under overload.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouterMetrics:
    """Requests by route, variant and status; latency; backend errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fleet_router_requests",
            "Requests answered, by route, serving model (variant) and HTTP status "
            "(499: the client left before its request body arrived).",
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
