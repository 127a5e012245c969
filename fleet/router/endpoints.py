"""The path operations of model and experiment routes.

Each route is a real FastAPI path operation whose body is typed by the model's
signature (so `/openapi.json` and `/docs` show every route's schema). What serves it is
our own ASGI handler (`make_route(...).app`), not FastAPI's request handling: FastAPI
parses bodies with Python's `json`, which accepts NaN, answers 422 to a wrong content
type, and, with Starlette's Request and Response objects, spent more CPU per request
than the rest of the hop. Ours reads the three headers it needs from the ASGI scope,
checks content type (415) and size (413), validates the raw bytes in one pydantic-core
pass, forwards them and answers with pre-encoded headers.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Body
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from fleet.router.coalesce import Coalescer
from fleet.router.config import RouterLimits
from fleet.router.metrics import RouterMetrics
from fleet.router.proxy import BackendError
from fleet.router.shadow import Shadows, ShadowTarget
from fleet.router.validation import RequestProblem, RouteSchema, check_content_type
from fleet.router.variants import Split
from fleet.schema import random_records

log = logging.getLogger("fleet.router")
Handler = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]
_JSON = [(b"content-type", b"application/json")]
CLIENT_GONE = 499
"""Status recorded in metrics when the client disconnects before its answer."""
CLIENT_GONE_KEY = "fleet.client_gone"
"""Scope key the server sets when the client hung up before its answer was complete."""


class Prediction(BaseModel):
    """A successful answer: the model that served it and one prediction per record."""

    model: str
    version: int
    predictions: list[Any]


class ErrorBody(BaseModel):
    """Any refused or failed request: what went wrong, and per problem the field."""

    error: str
    message: str
    request_id: str = ""
    """On 5xx: the id under which the router logged the details."""
    route: str = ""
    model: str = ""
    problems: list[dict[str, str]] = []


def request_id() -> str:
    """A new id for a failed request, in its answer and in the router's log."""
    return secrets.token_hex(8)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Body is not JSON",
        408: "Request head or body not sent in time",
        413: "Body over the size limit",
        415: "Content-Type is not application/json",
        431: "Request head too large",
        422: "Records do not match the model's signature",
        502: "Model server failed",
        503: "Model server unreachable or overloaded, or the router busy",
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
    headers: list[tuple[bytes, bytes]]
    """Response headers naming the model (and on experiment routes the variant)."""
    prefix: bytes


def target(model: str, version: int, backend: str, timeout_s: float, **extra: str) -> Target:
    # json.dumps: MLflow allows `"` and `\` in model names.
    prefix = b'{"model":' + json.dumps(model).encode() + b',"version":' + str(version).encode()
    names = {"x-model": model, "x-model-version": str(version), **extra}
    headers = [*_JSON, *((k.lower().encode(), v.encode()) for k, v in names.items())]
    return Target(model, version, backend, timeout_s, None, headers, prefix + b',"predictions":')


@dataclass(frozen=True)
class PathEndpoint:
    """What one path serves: its schema and its target (or an experiment's targets)."""

    path: str
    schema: RouteSchema
    targets: dict[str, Target]
    split: Split | None = None
    sticky_header: str = ""
    shadow: ShadowTarget | None = None

    def choose(self, key: str | None, rng: random.Random) -> Target:
        """The target for a request whose sticky header is `key` (None: not sent)."""
        if self.split is None:
            return next(iter(self.targets.values()))
        return self.targets[self.split.choose(self.path, key, rng)]


class ModelRoute(APIRoute):
    """An APIRoute served by the ASGI `handler` instead of FastAPI's request handling.

    FastAPI still reads the endpoint's signature for the OpenAPI document.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], *, handler: Handler, **kw: Any):
        super().__init__(path, endpoint, **kw)
        self.handler = handler
        self.app = handler


def make_route(
    ep: PathEndpoint,
    backends: Coalescer,
    bodies: Bodies,
    shadows: Shadows,
    metrics: RouterMetrics,
    tags: list[str],
) -> ModelRoute:
    """The path operation of `ep`: its typed body for OpenAPI, served by its ASGI handler.

    Of its successful requests, the shadow's share is copied to the shadow model once
    the caller has the answer (`fleet.router.shadow`).
    """
    rng = random.Random()
    sticky = ep.sticky_header.lower().encode() if ep.split is not None else None
    default_variant = next(iter(ep.targets)) if ep.split is None else ""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        variant = default_variant
        content_type = length = key = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = content_type or value
            elif name == b"content-length":
                length = length or value
            elif name == sticky:
                key = key or value
        headers = _JSON
        copy: tuple[list[Any], bytes | None, bytes] | None = None
        try:
            check_content_type(content_type.decode("latin-1") if content_type else None)
            raw = await bodies.read(receive, length)
            try:
                records = ep.schema.parse(raw)
            finally:
                bodies.release(len(raw))
            chosen = ep.choose(key.decode("latin-1") if key else None, rng)
            variant = chosen.model
            payload = ep.schema.dump(records, chosen.only)
            content = await backends.predict(
                chosen.backend, payload, len(records), chosen.timeout_s
            )
            status, body, headers = 200, chosen.prefix + content + b"}", chosen.headers
            if ep.shadow is not None and shadows.picked(ep.shadow):
                reuse = payload if ep.shadow.only == chosen.only else None
                copy = (records, reuse, content)
        except RequestProblem as problem:
            status, body = problem.status, problem.body(route=ep.path)
        except BackendError as exc:
            metrics.backend_error(ep.path, variant, exc.kind)
            rid = request_id()
            if exc.status >= 500:
                log.warning("request %s to %s (%s): %s", rid, ep.path, variant, exc.message)
            status, body = exc.status, exc.body(rid, route=ep.path, model=variant)
            headers = [*_JSON, (b"x-request-id", rid.encode())]
        except ClientGone:
            metrics.observe(ep.path, variant, CLIENT_GONE, time.perf_counter() - start)
            return
        except Exception:
            rid = request_id()
            log.exception("request %s to %s failed", rid, ep.path)
            status, body = 500, _internal(rid)
            headers = [*_JSON, (b"x-request-id", rid.encode())]
        headers = [*headers, (b"content-length", b"%d" % len(body))]
        if status == 408:
            # A stalled upload: drop the client. (Other refusals before the body was read
            # keep the connection: the server discards the rest of the body, and closing
            # with unread bytes would reset the connection before the client reads the
            # answer. A body that never ends is closed by the head timeout.)
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if scope.get(CLIENT_GONE_KEY):  # set by the server (fleet/router/server.py)
            status = CLIENT_GONE
        metrics.observe(ep.path, variant, status, time.perf_counter() - start)
        if copy is not None and ep.shadow is not None:
            # The caller has its answer: nothing from here on reaches it.
            records, reuse, content = copy
            sent = reuse or ep.schema.dump(records, ep.shadow.only)
            shadows.copy(ep.path, ep.shadow, sent, content)

    async def predict(body: Any) -> Prediction:
        raise NotImplementedError("served by the route's ASGI handler")  # pragma: no cover

    example = random_records(ep.schema.columns, 1, seed=1)[0]
    body_param = cast(Any, Annotated)[
        ep.schema.body_type, Body(examples=[example, [example, example]])
    ]
    predict.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=body_param)]
    )
    first = next(iter(ep.targets.values()))
    summary = (
        f"{first.model} v{first.version}"
        if ep.split is None
        else "A/B: " + ", ".join(ep.targets) + f" (sticky header {ep.sticky_header})"
    )
    if ep.shadow is not None:
        summary += f"; shadow {ep.shadow.model} on {ep.shadow.percent:g}%"
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


def _internal(rid: str) -> bytes:
    message = "the router failed; the request id names the details in its log"
    return json.dumps({"error": "internal_error", "message": message, "request_id": rid}).encode()


class ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


SMALL_BODY = 65_536
"""Bodies up to this size do not count against `buffered_body_bytes`: the server reads
this much ahead on any connection anyway, and a flood of stalled large uploads must not
turn away the ordinary small requests."""


class Bodies:
    """Reads request bodies within the router's limits: size (413), time once the head
    is in (408), and bytes of large bodies held at once over all requests (503: a
    request's declared Content-Length counts from its start), so that clients stalling
    their uploads hold neither the router's memory nor its connections for long."""

    def __init__(self, limits: RouterLimits) -> None:
        self.limits = limits
        self.held = 0
        """Bytes of request bodies being read or parsed right now."""

    async def read(self, receive: Receive, length: bytes | None) -> bytes:
        """The whole body; its bytes count as held until `release(len(body))`."""
        limit = self.limits.max_body_bytes
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > limit:
            raise _too_large(limit, f"Content-Length is {length.decode() if length else ''}")
        taken = 0
        done = False
        try:
            if declared is not None and declared > SMALL_BODY:
                taken = self._take(declared)
            chunks: list[bytes] = []
            size = 0
            async with asyncio.timeout(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit, "the body is longer")
                    if size > taken and (taken or size > SMALL_BODY):
                        taken += self._take(size - taken)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        done = True
                        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except TimeoutError:
            timeout = self.limits.body_timeout_s
            problem = f"the body did not arrive within {timeout:g} s"
            late = RequestProblem(408, "body_timeout", [{"field": "(body)", "problem": problem}])
            raise late from None
        finally:
            if not done:
                self.release(taken)

    def release(self, size: int) -> None:
        """Give back what `read` counted of a body of `size` bytes."""
        if size > SMALL_BODY:
            self.held -= size

    def _take(self, size: int) -> int:
        if self.held + size > self.limits.buffered_body_bytes:
            problem = "the router holds as many request bodies as it may; retry shortly"
            raise RequestProblem(503, "router_busy", [{"field": "(body)", "problem": problem}])
        self.held += size
        return size


def _too_large(limit: int, got: str) -> RequestProblem:
    return RequestProblem(
        413, "body_too_large", [{"field": "(body)", "problem": f"at most {limit} bytes ({got})"}]
    )
