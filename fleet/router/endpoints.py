"""The path operations of model and experiment routes.

Each route is a real FastAPI path operation whose body is typed by the model's
signature (so `/openapi.json` and `/docs` show every route's schema). Its request
handler is our own (`ModelRoute.get_route_handler`, FastAPI's extension point for
custom routes): FastAPI's default handler parses bodies with Python's `json`, which
accepts NaN, answers 422 to a wrong content type, and spends more time per request than
the rest of the hop. Ours checks content type (415) and size (413), validates the raw
bytes in one pydantic-core pass and then calls the path operation function.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Body, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from fleet.router.metrics import RouterMetrics
from fleet.router.proxy import BackendError, Proxy
from fleet.router.validation import RequestProblem, RouteSchema, check_content_type
from fleet.router.variants import Split
from fleet.routes import RouterLimits
from fleet.schema import random_records

log = logging.getLogger("fleet.router")
Handler = Callable[[Request], Coroutine[Any, Any, Response]]
VARIANT_KEY = "fleet.variant"
_JSON = "application/json"


class Prediction(BaseModel):
    """A successful answer: the model that served it and one prediction per record."""

    model: str
    version: int
    predictions: list[Any]


class ErrorBody(BaseModel):
    """Any refused or failed request: what went wrong, and per problem the field."""

    error: str
    message: str
    route: str = ""
    model: str = ""
    problems: list[dict[str, str]] = []


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Body is not JSON",
        413: "Body over the size limit",
        415: "Content-Type is not application/json",
        422: "Records do not match the model's signature",
        502: "Model server failed",
        503: "Model server unreachable or overloaded",
        504: "Model server timed out",
    }.items()
}


@dataclass(frozen=True)
class Target:
    """One model a path can forward to."""

    model: str
    version: int
    backend: str
    timeout_s: float
    only: tuple[str, ...] | None
    """Columns to forward, when the path accepts more than this model takes."""
    headers: dict[str, str]
    prefix: bytes


def target(model: str, version: int, backend: str, timeout_s: float, **extra: str) -> Target:
    prefix = b'{"model":"' + model.encode() + b'","version":' + str(version).encode()
    headers = {"X-Model": model, "X-Model-Version": str(version), **extra}
    return Target(model, version, backend, timeout_s, None, headers, prefix + b',"predictions":')


@dataclass(frozen=True)
class PathEndpoint:
    """What one path serves: its schema and its target (or an experiment's targets)."""

    path: str
    schema: RouteSchema
    targets: dict[str, Target]
    split: Split | None = None
    sticky_header: str = ""

    def choose(self, request: Request, rng: random.Random) -> Target:
        if self.split is None:
            return next(iter(self.targets.values()))
        key = request.headers.get(self.sticky_header)
        return self.targets[self.split.choose(self.path, key, rng)]


class ModelRoute(APIRoute):
    """An APIRoute whose request handler is `handler` instead of FastAPI's default."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, handler: Any, **kw: Any):
        self._handler = handler
        super().__init__(path, endpoint, **kw)

    def get_route_handler(self) -> Handler:
        handler: Handler = self._handler
        return handler


def make_route(
    ep: PathEndpoint, proxy: Proxy, metrics: RouterMetrics, limits: RouterLimits, tags: list[str]
) -> ModelRoute:
    """The path operation of `ep`, with its typed body and its fast handler."""
    rng = random.Random()

    async def predict(request: Request, body: Any) -> Response:
        records: list[BaseModel] = body if isinstance(body, list) else [body]
        chosen = ep.choose(request, rng)
        request.scope[VARIANT_KEY] = chosen.model
        payload = ep.schema.dump(records, chosen.only)
        try:
            content = await proxy.predict(chosen.backend, payload, chosen.timeout_s)
        except BackendError as exc:
            metrics.backend_error(ep.path, chosen.model, exc.kind)
            raise
        return Response(chosen.prefix + content + b"}", headers=chosen.headers, media_type=_JSON)

    example = random_records(ep.schema.columns, 1, seed=1)[0]
    body_param = cast(Any, Annotated)[
        ep.schema.body_type, Body(examples=[example, [example, example]])
    ]
    predict.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
            ),
            inspect.Parameter(
                "body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=body_param
            ),
        ]
    )
    default_variant = next(iter(ep.targets)) if ep.split is None else ""

    async def handle(request: Request) -> Response:
        start = time.perf_counter()
        try:
            check_content_type(request.headers.get("content-type"))
            records = ep.schema.parse(await read_body(request, limits.max_body_bytes))
            response = await predict(request, records)
        except RequestProblem as problem:
            response = _error(problem.status, problem.body(route=ep.path))
        except BackendError as exc:
            failure = {
                "error": exc.error,
                "message": exc.message,
                "route": ep.path,
                "model": request.scope.get(VARIANT_KEY, ""),
                "problems": [],
            }
            response = _error(exc.status, json.dumps(failure))
        except Exception:
            log.exception("route %s failed", ep.path)
            response = _error(500, b'{"error":"internal_error","message":"see the router log"}')
        variant = request.scope.get(VARIANT_KEY, default_variant)
        metrics.observe(ep.path, variant, response.status_code, time.perf_counter() - start)
        return response

    first = next(iter(ep.targets.values()))
    summary = (
        f"{first.model} v{first.version}"
        if ep.split is None
        else "A/B: " + ", ".join(ep.targets) + f" (sticky header {ep.sticky_header})"
    )
    return ModelRoute(
        ep.path,
        predict,
        handler=handle,
        methods=["POST"],
        tags=tags,
        summary=summary,
        response_model=Prediction,
        responses=ERROR_RESPONSES,
    )


def _error(status: int, body: bytes | str) -> Response:
    return Response(body, status_code=status, media_type=_JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit, f"Content-Length is {length}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, "the body is longer")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, got: str) -> RequestProblem:
    return RequestProblem(
        413, "body_too_large", [{"field": "(body)", "problem": f"at most {limit} bytes ({got})"}]
    )
