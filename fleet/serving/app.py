"""The model server's HTTP side: a plain ASGI app, run by uvicorn in one process.

`POST /predict` takes `{"records": [record, ...]}` and answers a JSON array with one
prediction per record, in order. The body is parsed and validated against the model's
signature in one pass (pydantic-core, from the bytes), so a bad record gets a 400 whose
`detail` names it (`loc: ["records", i, field]`). `GET /livez` and `GET /readyz` answer 200
(the model is loaded before the server listens), `GET /metrics` is Prometheus text with
`fleet_batch_size{model}` (records per model call), `fleet_predict_requests_total{model,
code}` and `fleet_model_info{model, path}` (which predictor path serves the model,
`fleet.serving.model`).

A pack server (`PackApp`) serves several models in one process, each under
`/models/<name>/`, each with its own `ModelApp`.

No web framework: per request the app does only what the contract needs, which on a
small model is most of the server's cost (docs/benchmarks.md, "Model server").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from fleet.schema import record_model
from fleet.serving.batcher import MicroBatcher
from fleet.serving.config import ServerConfig
from fleet.serving.model import Records

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Predict = Callable[[Records], list[Any]]

log = logging.getLogger("fleet.serving")
MAX_ERRORS = 20
"""Most validation problems one 400 lists."""
_JSON = [(b"content-type", b"application/json")]

BATCH_SIZE = Histogram(
    "fleet_batch_size",
    "Records per model call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
REQUESTS = Counter(
    "fleet_predict_requests", "POST /predict answers by model and status code", ["model", "code"]
)
MODEL_INFO = Gauge(
    "fleet_model_info", "The served model and the predictor path it takes", ["model", "path"]
)


def body_model(config: ServerConfig) -> type[BaseModel]:
    """`{"records": [...]}` with 1 to `max_records` records valid for the signature."""
    record = record_model(config.model_name, list(config.inputs))
    records = Annotated[
        list[record],  # type: ignore[valid-type]
        Field(min_length=1, max_length=config.max_records),
    ]
    model: type[BaseModel] = create_model(
        "PredictInput", __config__=ConfigDict(extra="forbid"), records=(records, ...)
    )
    return model


class ModelApp:
    """The ASGI app of one loaded model (`predict`: records in, predictions out)."""

    def __init__(self, config: ServerConfig, predict: Predict) -> None:
        self.config = config
        self.predict = predict
        self.body = body_model(config)
        self._batch_size = BATCH_SIZE.labels(config.model_name)
        self.batcher = (
            MicroBatcher(
                predict,
                max_batch_size=config.max_batch_size,
                max_latency_ms=config.max_latency_ms,
                on_batch=self._batch_size.observe,
            )
            if config.batching
            else None
        )
        name = config.model_name
        self._codes = {code: REQUESTS.labels(name, str(code)) for code in (200, 400, 413, 500)}
        MODEL_INFO.labels(name, getattr(predict, "kind", "custom")).set(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == "/predict":
            if method != "POST":
                await _answer(send, 405, b'{"error": "POST only"}')
                return
            try:
                status, body = await self._predict(receive)
            except _Gone:
                return  # the client went away; nothing to answer
            self._codes[status].inc()
            await _answer(send, status, body)
        else:
            await _ops(path, send)

    async def _predict(self, receive: Receive) -> tuple[int, bytes]:
        raw = await _read_body(receive, self.config.max_body_bytes)
        if raw is None:
            limit = self.config.max_body_bytes
            return 413, json.dumps({"error": f"the body is over {limit} bytes"}).encode()
        try:
            parsed = self.body.model_validate_json(raw)
        except ValidationError as exc:
            problems = exc.errors(include_url=False, include_context=False, include_input=False)
            return 400, json.dumps({"detail": problems[:MAX_ERRORS]}).encode()
        records = [r.model_dump(by_alias=True) for r in parsed.records]  # type: ignore[attr-defined]
        try:
            if self.batcher is not None:
                out = await self.batcher.submit(records)
            else:
                out = self.predict(records)
                self._batch_size.observe(len(records))
        except Exception:
            log.exception("model '%s': prediction failed", self.config.model_name)
            return 500, b'{"error": "the model failed on these records"}'
        return 200, json.dumps(out).encode()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class PackApp:
    """Several models in one server (a pack): `/models/<name>/predict`, and that model's
    `/livez` and `/readyz` (which the router's health checks call), go to the model's own
    app, with its own validation, batcher and metrics labels; `/livez`, `/readyz` and
    `/metrics` at the top are the server's."""

    def __init__(self, apps: dict[str, ModelApp]) -> None:
        self.apps = apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path = scope["path"]
        if not path.startswith("/models/"):
            await _ops(path, send)
            return
        name, _, rest = path[len("/models/") :].partition("/")
        app = self.apps.get(name)
        if app is None:
            await _answer(send, 404, json.dumps({"error": f"no model '{name}' here"}).encode())
            return
        await app({**scope, "path": "/" + rest}, receive, send)

    def close(self) -> None:
        for app in self.apps.values():
            app.close()


async def _ops(path: str, send: Send) -> None:
    """The server's own paths: probes and metrics; 404 for the rest."""
    if path in ("/livez", "/readyz"):
        await _answer(send, 200, b'{"status": "ok"}')
    elif path == "/metrics":
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": generate_latest()})
    else:
        await _answer(send, 404, b'{"error": "not found"}')


class _Gone(Exception):
    """The client disconnected before its body was in."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it is over `limit` bytes (the rest is not kept)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
