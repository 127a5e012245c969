"""The pooled proxy to the model servers: keep-alive HTTP/1.1 connections, per backend.

The router makes one kind of call: `POST <backend>/predict` with a JSON body, to its own
model servers. That call is made here on asyncio protocols with httptools (the HTTP
parser uvicorn uses) instead of a general-purpose client, because the client was most
of the router's cost (docs/benchmarks.md): on a trivial backend at concurrency 16 the
router spent 0.37-0.51 ms of CPU per request with aiohttp's client and 0.17-0.21 ms
with this one (httpx's client alone took 2.4 ms per call).

- One request at a time per connection (no pipelining); idle connections are kept per
  backend and reused, newest first; one closed by the server while idle removes itself.
- Answers must carry Content-Length or chunked encoding, as every ASGI server's do; an
  answer that ends only by closing the connection is a 502.
- At most `max_connections` calls are in flight over all backends; more wait for a slot.
- Every call is bounded by its route's timeout as a whole (slot wait, connect, send and
  receive together), so a hanging backend costs its callers at most that long and other
  routes keep working. A connection whose call timed out or was cancelled is closed:
  its state is unknown.
- A reused connection that the server closed before answering (its keep-alive timeout
  raced our request) is retried once on a new connection; a prediction is a pure
  function of the records, so sending them twice is harmless.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import cast

import httptools

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""A model server's answer larger than this is a broken backend, not predictions."""


class BackendError(Exception):
    """A backend call that did not give predictions; `status` is what the caller gets."""

    def __init__(self, status: int, error: str, message: str, kind: str) -> None:
        self.status = status
        self.error = error
        self.message = message
        self.kind = kind
        super().__init__(message)

    def body(self, request_id: str, **context: str) -> bytes:
        """The JSON body the caller gets (with `context` such as route and model).

        A model server's 4xx is about the caller's input: its message is passed on. A 5xx
        body says only what kind of failure it was and the request id; `message`, which
        names the model server's address, goes to the router's log under that id.
        """
        message = self.message if self.status < 500 else _PUBLIC[self.error]
        payload = {"error": self.error, "message": message, "request_id": request_id}
        return json.dumps({**payload, **context, "problems": []}).encode()


_PUBLIC = {
    "backend_timeout": "the model server did not answer in time",
    "backend_unavailable": "the model server is unavailable; try again later",
    "backend_error": "the model server failed",
}
"""What a caller learns of a failed model server call (details are in the router log)."""


def timeout_error(backend: str, timeout_s: float) -> BackendError:
    """The 504 of a call to `backend` that got no answer within `timeout_s`."""
    message = f"model server {backend} gave no answer in {timeout_s:g} s"
    return BackendError(504, "backend_timeout", message, "timeout")


class _Broken(Exception):
    """The connection failed during a call; `answered` if any response bytes came."""

    def __init__(self, message: str, answered: bool) -> None:
        self.answered = answered
        super().__init__(message)


@dataclass
class _Backend:
    """One model server: where to connect, the request head, its idle connections."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    head: bytes
    """`POST <path>/predict HTTP/1.1` and the fixed headers, up to Content-Length."""
    idle: list[_Connection] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a model server, one call at a time."""

    def __init__(self, backend: _Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.answered = False
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for: the connection is out of step; drop it.
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(_Broken(f"unparsable response: {exc}", answered=True))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        detail = f": {exc}" if exc else ""
        self._fail(_Broken(f"connection closed before the answer{detail}", self.answered))
        if self in self.backend.idle:
            self.backend.idle.remove(self)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_RESPONSE_BYTES:
            self._fail(_Broken(f"answer over {MAX_RESPONSE_BYTES} bytes", answered=True))
            self.close()
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.keep_alive = self.parser.should_keep_alive()
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    # calls
    async def call(self, body: bytes) -> tuple[int, bytes]:
        """Send one request and wait for its whole response: (status, body)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.chunks, self.size, self.answered, self.keep_alive = [], 0, False, False
        self.transport.write(self.backend.head + b"%d\r\n\r\n%s" % (len(body), body))
        return await self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Proxy:
    """POSTs record batches to model servers over pooled keep-alive connections."""

    def __init__(self, max_connections: int = 512, keepalive_s: float = 60.0) -> None:
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self._backends: dict[str, _Backend] = {}
        # Made on first use: a semaphore belongs to the running event loop.
        self._slots: asyncio.Semaphore | None = None

    async def predict(self, backend: str, records: bytes, timeout_s: float) -> bytes:
        """The backend's JSON array of predictions for `records` (a JSON array)."""
        target = self._backends.get(backend) or self.add(backend)
        body = b'{"records":' + records + b"}"
        try:
            async with asyncio.timeout(timeout_s):
                status, content = await self._post(target, body)
        except TimeoutError:
            raise timeout_error(backend, timeout_s) from None
        except _Broken as exc:
            message = f"model server {backend} broke the connection: {exc}"
            raise BackendError(502, "backend_error", message, "transport") from None
        except OSError as exc:
            message = f"cannot connect to model server {backend}: {exc}"
            raise BackendError(503, "backend_unavailable", message, "connect") from None
        if status == 200 and content.lstrip()[:1] == b"[":
            return content
        raise _status_error(backend, status, content)

    async def _post(self, target: _Backend, body: bytes) -> tuple[int, bytes]:
        slots = self._slots or self._open()
        async with slots:
            retried = False
            while True:
                conn = self._idle(target)
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(target)
                try:
                    status, content = await conn.call(body)
                except _Broken as exc:
                    conn.close()
                    if reused and not exc.answered and not retried:
                        retried = True
                        continue  # the server closed it while idle: once more, fresh
                    raise
                except BaseException:
                    conn.close()  # timed out or cancelled mid-call: state unknown
                    raise
                if conn.keep_alive and not conn.closed:
                    conn.idle_since = time.monotonic()
                    target.idle.append(conn)
                else:
                    conn.close()
                return status, content

    def _idle(self, target: _Backend) -> _Connection | None:
        oldest = time.monotonic() - self.keepalive_s
        while target.idle:
            conn = target.idle.pop()
            if not conn.closed and conn.idle_since >= oldest:
                return conn
            conn.close()
        return None

    async def _connect(self, target: _Backend) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: _Connection(target),
            target.host,
            target.port,
            ssl=target.ssl,
            server_hostname=target.host if target.ssl else None,
        )
        return conn

    def _open(self) -> asyncio.Semaphore:
        self._slots = asyncio.Semaphore(self.max_connections)
        return self._slots

    def add(self, backend: str) -> _Backend:
        """Register a backend base URL; raises ValueError when it is not http(s)://host."""
        if backend in self._backends:
            return self._backends[backend]
        url = urllib.parse.urlsplit(backend)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port][/path], not {backend!r}")
        secure = url.scheme == "https"
        port = url.port or (443 if secure else 80)
        head = (
            f"POST {url.path.rstrip('/')}/predict HTTP/1.1\r\n"
            f"Host: {url.netloc.rpartition('@')[2]}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode("latin-1")
        context = ssl.create_default_context() if secure else None
        target = _Backend(url.hostname, port, context, head)
        self._backends[backend] = target
        return target

    async def aclose(self) -> None:
        for target in self._backends.values():
            while target.idle:
                target.idle.pop().close()


def _status_error(backend: str, status: int, content: bytes) -> BackendError:
    detail = _message(content)
    if status == 200:
        message = f"model server {backend} did not answer a JSON array: {detail}"
        return BackendError(502, "backend_error", message, "bad_response")
    if 400 <= status < 500:
        # The caller's input reached the model server and was refused there: pass it on.
        return BackendError(status, "backend_rejected", detail, "rejected")
    if status == 503:
        message = f"model server {backend} is unavailable: {detail}"
        return BackendError(503, "backend_unavailable", message, "unavailable")
    message = f"model server {backend} answered {status}: {detail}"
    return BackendError(502, "backend_error", message, "status")


def _message(content: bytes, limit: int = 2000) -> str:
    """The backend's error message: a JSON body's text as is, else the raw text."""
    text = content[:limit].decode("utf-8", errors="replace")
    try:
        value = json.loads(content)
    except ValueError:
        return text
    return json.dumps(value)[:limit] if not isinstance(value, str) else value[:limit]
