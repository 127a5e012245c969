"""The routes config: what the router serves, as one JSON document, and its reader.

`fleet.routes.build_routes_config` makes it from the fleet and its resolved models; the
Pulumi program puts it in a ConfigMap, `fleet serve` writes it to a file, `fleet routes`
prints it, and the router reads it with `load_routes_config`.

Format (version 1)::

    {
      "version": 1,
      "limits": {"max_batch": 1000, "max_body_bytes": 1048576, "timeout_s": 5.0,
                 "backend_calls": 2, "shadow_calls": 4, "client_connections": 1000, ...},
      "routes": [
        {"path": "/probability/1/TAXI/trafficaware",
         "model": "match_probability_1_TAXI_trafficaware",
         "version": 1,
         "backend": "http://match-probability-1-taxi-trafficaware-1a2b3c:3000",
         "inputs": [{"name": "route_decision_score", "type": "double", "required": true}],
         "timeout_s": 5.0}
      ],
      "experiments": [
        {"path": "/probability/2/TAXI",
         "sticky_header": "X-Caller-Id",
         "variants": [{"model": "match_probability_2_TAXI_trafficaware", "weight": 50},
                      {"model": "match_probability_2_TAXI_trafficunaware", "weight": 50}]}
      ]
    }

- `limits` apply to every route: records per request (`max_batch`), request body size
  (`max_body_bytes`, larger bodies get 413), the default backend timeout, and how many
  calls may be in flight per model server before requests wait and are sent together
  (`backend_calls`, 0 for no limit); and what one client can hold of the router
  (connections, head size and count, head and body read timeouts, bodies held at once,
  pipelined requests: fleet/router/server.py).
- A route's `backend` is the model server's base URL; the router POSTs
  `{"records": [...]}` to `<backend>/predict` (the model server API). `inputs` are the
  signature's columns (`fleet.schema.Column`), used to validate requests before they
  leave the router. `timeout_s` bounds the whole backend call (504 past it).
- An experiment's `variants` name models that have their own route; weights are
  percentages summing to 100. Requests carrying `sticky_header` always get the same
  variant for the same header value; requests without it are split at random by weight.
- A route or experiment may carry `"shadow": {"model": ..., "percent": 10}`: that share
  of its valid requests is copied, after the caller has its answer, to the shadow
  model's server (a model with its own route here), at most `limits.shadow_calls` at a
  time per path; the answers are only compared (fleet/router/shadow.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet.errors import RoutesConfigError
from fleet.schema import Column, ColumnType

CONFIG_VERSION: Literal[1] = 1


ROUTER_PATHS = ("/docs", "/redoc", "/openapi.json", "/metrics", "/healthz", "/readyz")
"""Paths the router serves itself: no route may be one of them or lie under one."""


def own_path(path: str) -> str | None:
    """The router's own path that `path` is or lies under, or None."""
    return next((p for p in ROUTER_PATHS if path == p or path.startswith(p + "/")), None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouterLimits(_Strict):
    """Limits the router enforces on every route."""

    max_batch: Annotated[int, Field(ge=1, le=100_000)] = 1000
    """Most records in one request; larger batches get 422."""
    max_body_bytes: Annotated[int, Field(ge=64)] = 1_048_576
    """Largest request body in bytes; larger bodies get 413."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    """Default time a backend call may take before the router answers 504."""
    backend_calls: Annotated[int, Field(ge=0, le=1024)] = 2
    """Calls in flight per model server; requests beyond wait and go together as one
    call of at most `max_batch` records (fleet/router/coalesce.py). 0: one call per
    request, no limit."""
    client_connections: Annotated[int, Field(ge=1, le=100_000)] = 4096
    """Open client connections; one more gets 503 and is closed at once."""
    header_bytes: Annotated[int, Field(ge=1024, le=1_048_576)] = 16_384
    """Longest request line plus headers; longer get 431 and the connection closes."""
    header_count: Annotated[int, Field(ge=8, le=1000)] = 100
    """Most headers in a request; more get 431 and the connection closes."""
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    """Time for a request's head to arrive, from the connection's opening or the previous
    answer; a late one gets 408, an idle connection is closed."""
    body_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    """Time for a request's body to arrive once its head has; a late one gets 408 and the
    connection closes."""
    buffered_body_bytes: Annotated[int, Field(ge=65_536)] = 33_554_432
    """Request bodies held at once, over all requests (a request's Content-Length counts
    from its start); a body that does not fit gets 503 at once, so stalled uploads cannot
    fill the router's memory."""
    pipelined: Annotated[int, Field(ge=0, le=1000)] = 8
    """Requests a client may queue on one connection behind the one being answered; more
    close the connection."""
    shadow_calls: Annotated[int, Field(ge=1, le=1024)] = 4
    """Shadow calls in flight per route; a request picked for the shadow while this many
    are in flight is not copied (counted as dropped), so a slow shadow costs a bounded
    share of the router and never holds up the route's own calls."""


class InputColumn(_Strict):
    """One input column of the model's signature."""

    name: Annotated[str, Field(min_length=1)]
    """Column name, the key of the field in a record."""
    type: ColumnType
    """MLflow column type."""
    required: bool = True
    """Whether a record must carry this field."""

    def column(self) -> Column:
        return Column(name=self.name, type=self.type, required=self.required)


class ShadowRef(_Strict):
    """A model that gets a copy of a route's requests; its answers never reach callers."""

    model: Annotated[str, Field(min_length=1)]
    """A model that has its own route in this config."""
    percent: Annotated[float, Field(ge=0, le=100)]
    """Share of the route's valid requests copied to it."""


class Route(_Strict):
    """One model served on its own path."""

    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._\-/]+$")]
    """The business path (`/probability/1/TAXI/trafficaware`)."""
    model: Annotated[str, Field(min_length=1)]
    """Registered model name in MLflow."""
    version: Annotated[int, Field(ge=1)]
    """Resolved registry version."""
    backend: Annotated[str, Field(pattern=r"^https?://")]
    """Base URL of the model server (`http://host:3000`)."""
    inputs: Annotated[list[InputColumn], Field(min_length=1)]
    """Signature columns a record is validated against."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    """Time the backend call may take before the router answers 504."""
    shadow: ShadowRef | None = None
    """The model that gets a copy of this route's requests."""

    def columns(self) -> list[Column]:
        return [c.column() for c in self.inputs]


class VariantRef(_Strict):
    """One arm of an experiment."""

    model: Annotated[str, Field(min_length=1)]
    """A model that has its own route in this config."""
    weight: Annotated[int, Field(ge=0, le=100)]
    """Share of traffic in percent."""


class ExperimentRoute(_Strict):
    """A path whose traffic is split between models by weight."""

    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._\-/]+$")]
    """The experiment's own path (`/probability/2/TAXI`)."""
    sticky_header: Annotated[str, Field(min_length=1)] = "X-Sticky-Key"
    """Request header whose value keeps one caller on one variant."""
    variants: Annotated[list[VariantRef], Field(min_length=1)]
    """The arms and their weights (summing to 100)."""
    shadow: ShadowRef | None = None
    """The model that gets a copy of this experiment's requests."""

    @model_validator(mode="after")
    def _weights(self) -> ExperimentRoute:
        total = sum(v.weight for v in self.variants)
        if total != 100:
            raise ValueError(f"experiment {self.path}: variant weights sum to {total}, not 100")
        return self


class RoutesConfig(_Strict):
    """The whole routes config the router is made from."""

    version: Literal[1] = CONFIG_VERSION
    """Format version of this document."""
    limits: RouterLimits = RouterLimits()
    """Limits on every route."""
    routes: list[Route]
    """Model routes."""
    experiments: list[ExperimentRoute] = []
    """A/B experiment routes."""

    @model_validator(mode="after")
    def _consistent(self) -> RoutesConfig:
        models = {r.model for r in self.routes}
        paths = [r.path for r in self.routes] + [e.path for e in self.experiments]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"path(s) served twice: {', '.join(dupes)}")
        for path in paths:
            if served := own_path(path):
                raise ValueError(f"{path}: the router serves {served} itself")
        for e in self.experiments:
            missing = [v.model for v in e.variants if v.model not in models]
            if missing:
                raise ValueError(
                    f"experiment {e.path}: variant model(s) without a route: {', '.join(missing)}"
                )
        for path, shadow, own in [
            *((r.path, r.shadow, {r.model}) for r in self.routes),
            *((e.path, e.shadow, {v.model for v in e.variants}) for e in self.experiments),
        ]:
            if shadow is not None and shadow.model not in models:
                raise ValueError(f"{path}: shadow model without a route: {shadow.model}")
            if shadow is not None and shadow.model in own:
                raise ValueError(f"{path}: the shadow {shadow.model} already answers this path")
        return self

    def route_for(self, model: str) -> Route:
        return next(r for r in self.routes if r.model == model)


def parse_routes_config(data: Any) -> RoutesConfig:
    """A validated `RoutesConfig`; raises RoutesConfigError naming each bad field."""
    try:
        return RoutesConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = str(e["msg"]).removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise RoutesConfigError("routes config: " + "; ".join(problems)) from exc


def load_routes_config(path: str | Path) -> RoutesConfig:
    """Read and validate a routes config JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RoutesConfigError(f"routes config {path}: {exc}") from exc
    return parse_routes_config(data)
