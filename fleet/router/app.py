"""The router app factory: `create_app(config) -> FastAPI`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from fleet.router.coalesce import Coalescer
from fleet.router.config import RoutesConfig, ShadowRef, parse_routes_config
from fleet.router.endpoints import Bodies, Handler, ModelRoute, PathEndpoint, make_route, target
from fleet.router.health import BackendHealth
from fleet.router.metrics import UNMATCHED, RouterMetrics
from fleet.router.proxy import Proxy
from fleet.router.shadow import Shadows, ShadowTarget
from fleet.router.validation import RequestProblem, RouteSchema, merged_columns
from fleet.router.variants import Split
from fleet.schema import exact_integer_bounds

log = logging.getLogger("fleet.router")
_JSON = "application/json"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class RouterApp(FastAPI):
    """FastAPI with a direct lane for POSTs to model and experiment routes.

    The routes are ordinary path operations (OpenAPI, /docs, and FastAPI serves them if
    asked). But a POST whose path is exactly one of them goes straight to the route's
    handler through one dict lookup, skipping Starlette's route scan (a regex per route:
    150 models, 150 regexes) and five middleware layers that this app does not use.
    The handler catches its own errors, so nothing escapes to the server.
    """

    fast: dict[str, Handler]

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, with the integer columns' bounds exact (not floats)."""
        if self.openapi_schema is None:
            self.openapi_schema = exact_integer_bounds(super().openapi())
        return self.openapi_schema

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if b"%2f" in scope.get("raw_path", b"").lower():
                # The server decoded `%2F` into `/`: `/probability%2F1` must not become a
                # route (nor reach one through a proxy that matched the encoded form).
                await _refuse_encoded_slash(send)
                return
            if scope["method"] == "POST":
                handler = self.fast.get(scope["path"])
                if handler is not None:
                    await handler(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


_ENCODED_SLASH = RequestProblem(
    400, "bad_path", [{"field": "path", "problem": "encoded slashes (%2F) are not allowed"}]
)


async def _refuse_encoded_slash(send: Send) -> None:
    body = _ENCODED_SLASH.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    config: dict[str, Any] | RoutesConfig,
    *,
    max_connections: int = 512,
    health_interval_s: float = 2.0,
) -> FastAPI:
    """The router for `config` (a routes config dict or a loaded `RoutesConfig`).

    Every `health_interval_s` (0: never) it checks each model server's `/readyz`; the
    routes of those that fail are named by its own `/readyz`.
    Raises `RoutesConfigError` naming the field when the config is not valid.
    """
    cfg = config if isinstance(config, RoutesConfig) else parse_routes_config(config)
    proxy = Proxy(max_connections=max_connections)
    backends = Coalescer(proxy, cfg.limits.backend_calls, cfg.limits.max_batch)
    metrics = RouterMetrics()
    shadows = Shadows(proxy, metrics, cfg.limits.shadow_calls)
    bodies = Bodies(cfg.limits)
    state = {"ready": False}
    models_of: dict[str, list[str]] = {}
    for r in cfg.routes:
        models_of.setdefault(r.backend, []).append(r.model)
        metrics.backend_up(r.model, True)

    def changed(backend: str, problem: str | None) -> None:
        for model in models_of[backend]:
            metrics.backend_up(model, problem is None)
        if problem is None:
            log.warning("model server %s answers again", backend)
        else:
            log.warning("model server %s is down: %s", backend, problem)

    health = BackendHealth([r.backend for r in cfg.routes], health_interval_s, changed)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watch = asyncio.create_task(health.run()) if health_interval_s > 0 else None
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            await shadows.aclose()
            await proxy.aclose()

    app = RouterApp(
        title="model-fleet router",
        summary=f"{len(cfg.routes)} model routes, {len(cfg.experiments)} experiments",
        description="POST one record (a JSON object) or a batch (a JSON array of records) "
        "to a model's route; experiment routes split traffic between models by weight.",
        lifespan=lifespan,
        # Starlette answers `/route/` with a redirect to an URL made from the Host header.
        redirect_slashes=False,
        # The docs pages are our own (`_docs`): FastAPI's load their scripts from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.proxy = proxy
    app.state.metrics = metrics
    app.state.shadows = shadows
    app.state.config = cfg
    app.fast = {}
    for r in cfg.routes:
        proxy.add(r.backend)
    for ep, tags in _endpoints(cfg):
        route: ModelRoute = make_route(ep, backends, bodies, shadows, metrics, tags)
        app.router.routes.append(route)
        app.fast[route.path] = route.handler

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Starting or stopping"}},
    )
    async def readyz() -> Response:
        """Serving: the config is loaded and the connection pool is open. Routes whose
        model server failed its last health check are named in `down` (the router
        still serves the others, so it stays ready)."""
        ok = state["ready"]
        down = _down_routes(cfg, health.down)
        status = ("degraded" if down else "ready") if ok else "starting"
        body = {"status": status, "routes": len(cfg.routes), "down": down}
        return Response(json.dumps(body), status_code=200 if ok else 503, media_type=_JSON)

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        """Prometheus metrics, in its text format (version 0.0.4)."""
        return Response(metrics.render(), media_type=_PROMETHEUS)

    _docs(app)
    _error_handlers(app, metrics)
    return app


class Readiness(BaseModel):
    """The router's readiness, and the routes it cannot serve right now."""

    status: str
    """ready, degraded (some routes are down), or starting."""
    routes: int
    """Model routes in the config."""
    down: dict[str, str] = {}
    """Route path -> why: its model server (or an experiment's variant) failed its
    last health check."""


def _down_routes(cfg: RoutesConfig, down: dict[str, str]) -> dict[str, str]:
    if not down:
        return {}
    out = {r.path: f"{r.model}: {down[r.backend]}" for r in cfg.routes if r.backend in down}
    for e in cfg.experiments:
        failing = [v.model for v in e.variants if cfg.route_for(v.model).backend in down]
        if failing:
            out[e.path] = "variant down: " + ", ".join(failing)
    return out


def _endpoints(cfg: RoutesConfig) -> list[tuple[PathEndpoint, list[str]]]:
    max_batch = cfg.limits.max_batch
    out: list[tuple[PathEndpoint, list[str]]] = []
    by_model = {r.model: r for r in cfg.routes}
    for r in cfg.routes:
        schema = RouteSchema(r.model, r.columns(), max_batch)
        t = target(r.model, r.version, r.backend, r.timeout_s)
        shadow = _shadow(cfg, r.shadow, schema)
        out.append((PathEndpoint(r.path, schema, {r.model: t}, shadow=shadow), ["models"]))
    for e in cfg.experiments:
        routes = [by_model[v.model] for v in e.variants]
        columns = merged_columns(f"experiment {e.path}", [r.columns() for r in routes])
        schema = RouteSchema(f"{e.path} request", columns, max_batch)
        targets = {}
        for r in routes:
            t = target(r.model, r.version, r.backend, r.timeout_s, **{"X-Variant": r.model})
            if r.columns() != columns:
                # The experiment accepts every variant's columns; each gets only its own.
                t = t.__class__(**{**t.__dict__, "only": tuple(c.name for c in r.inputs)})
            targets[r.model] = t
        split = Split.of([(v.model, v.weight) for v in e.variants])
        shadow = _shadow(cfg, e.shadow, schema)
        ep = PathEndpoint(e.path, schema, targets, split, e.sticky_header, shadow)
        out.append((ep, ["experiments"]))
    return out


def _shadow(cfg: RoutesConfig, ref: ShadowRef | None, schema: RouteSchema) -> ShadowTarget | None:
    """Where the copies of a path with `schema` go; only the columns the shadow takes."""
    if ref is None:
        return None
    route = cfg.route_for(ref.model)
    offered = [c.name for c in schema.columns]
    taken = tuple(c.name for c in route.inputs if c.name in offered)
    only = None if set(taken) == set(offered) else taken
    return ShadowTarget(ref.model, route.backend, route.timeout_s, ref.percent, only)


_ASSETS = importlib.resources.files("fastapi_offline") / "static"
"""Swagger UI's and ReDoc's scripts and styles, from the fastapi-offline package."""
ASSET_PATHS = {
    "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    "/docs/swagger-ui.css": ("swagger-ui.css", "text/css"),
    "/docs/favicon.png": ("favicon.png", "image/png"),
    "/redoc/redoc.standalone.js": ("redoc.standalone.js", "text/javascript"),
}
"""Where the router serves the docs pages' assets itself: a cluster without access to a
public CDN still gets working /docs and /redoc pages."""


def _docs(app: FastAPI) -> None:
    """/docs (Swagger UI), its OAuth2 redirect page and /redoc, with their assets served
    by the router itself."""
    title = f"{app.title} - docs"
    favicon = "/docs/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=title,
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url=favicon,
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=title,
            redoc_js_url="/redoc/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )

    for path, (name, media_type) in ASSET_PATHS.items():
        app.add_api_route(
            path, _asset((_ASSETS / name).read_bytes(), media_type), include_in_schema=False
        )


def _asset(content: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def asset() -> Response:
        headers = {"cache-control": "public, max-age=86400"}
        return Response(content, media_type=media_type, headers=headers)

    return asset


def _error_handlers(app: FastAPI, metrics: RouterMetrics) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            error, message = "not_found", f"no route {request.url.path}; see /docs for the routes"
        elif exc.status_code == 405:
            error, message = "method_not_allowed", f"{request.method} is not allowed here"
        else:
            error, message = "http_error", str(exc.detail)
        metrics.observe(UNMATCHED, "", exc.status_code, 0.0)
        body = {
            "error": error,
            "message": message,
            "problems": [{"field": "path", "problem": message}],
        }
        return Response(
            json.dumps(body),
            status_code=exc.status_code,
            media_type=_JSON,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        # Only the ops routes reach FastAPI's own validation; keep the error shape.
        problems = [
            {"field": ".".join(map(str, e["loc"])), "problem": e["msg"]} for e in exc.errors()
        ]
        body = {"error": "invalid_input", "message": problems[0]["problem"], "problems": problems}
        return Response(json.dumps(body), status_code=422, media_type=_JSON)
