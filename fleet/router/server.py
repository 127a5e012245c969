"""The router's HTTP protocol: uvicorn's httptools protocol, bounded against its clients.

uvicorn bounds no request head (a 50 MB header is read whole), arms its keep-alive
timeout only after an answer (a connection that never sends a request, or sends its
head a byte at a time, is held for good) and queues pipelined requests without limit.
Each of these lets a few clients hold the router's memory or connections. This protocol
adds, from the routes config's `limits` (`fleet.router.config.RouterLimits`):

- `header_bytes`, `header_count`: a request line plus headers longer, or more headers,
  get 431 and the connection is closed;
- `header_timeout_s`: a request head must arrive within this long of the connection
  opening or of the previous answer; late heads get 408 (an idle connection is just
  closed), so slow-header and idle-connection floods are shed;
- `pipelined`: more requests queued behind the one being answered close the connection;
- a client that pipelines and hangs up: the request being answered is marked
  disconnected (uvicorn marks only the last one read), so no traceback per request.

- `client_connections`: a connection past this many open ones gets 503 at once and is
  closed (uvicorn's own `limit_concurrency` would answer 503 to every request of every
  connection while an idle flood lasts).

The body's read timeout and the bound on bodies held at once are the routes' own
(`fleet.router.endpoints.Bodies`).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from fleet.router.config import RouterLimits
from fleet.router.endpoints import CLIENT_GONE_KEY
from fleet.router.validation import RequestProblem

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def _answer(problem: RequestProblem, *headers: bytes) -> bytes:
    """The whole HTTP answer of `problem` (its JSON body, as every refusal of the
    router's), closing the connection."""
    body = problem.body()
    head = b"HTTP/1.1 %d %s\r\n" % (problem.status, _REASONS[problem.status])
    head += b"content-type: application/json\r\nconnection: close\r\n"
    head += b"".join(h + b"\r\n" for h in headers)
    return head + b"content-length: %d\r\n\r\n%s" % (len(body), body)


def _head_problem(status: int, error: str, problem: str) -> RequestProblem:
    return RequestProblem(status, error, [{"field": "(head)", "problem": problem}])


_BUSY = _answer(
    RequestProblem(
        503,
        "router_busy",
        [{"field": "", "problem": "the router holds as many connections as it may; retry"}],
    ),
    b"retry-after: 1",
)


def bounded_protocol(limits: RouterLimits) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn runs (`http=`) with `limits`."""
    return type("BoundedProtocol", (BoundedProtocol,), {"limits": limits})


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of the module docstring."""

    limits: RouterLimits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.client_connections:
            # Shed the newest connection, not the requests of those already served.
            transport.write(_BUSY)
            transport.close()
            return
        self._head_bytes = 0
        self._head_count = 0
        self._reading_head = False
        self._refused: RequestProblem | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._running: RequestResponseCycle | None = None
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # shed in connection_made: uvicorn never knew it
        self._disarm_head_timer()
        # uvicorn marks only the last request read as disconnected; an earlier one still
        # being answered (the client pipelined, then hung up) would write to the closed
        # transport and log a traceback per request.
        running = self._running
        if running is not None and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        for cycle in (running, self.cycle):
            if cycle is not None and not cycle.response_complete:
                # The route's handler counts the request as 499: nobody got its answer.
                cast(dict[str, Any], cycle.scope)[CLIENT_GONE_KEY] = True
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return  # shed in connection_made
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # the router serves no websockets
        except httptools.HttpParserError:
            # A bound raised in a callback reaches here wrapped; `_refused` says which.
            if self._refused is None:
                self.send_400_response("Invalid HTTP request received.")
            else:
                self._refuse(self._refused)

    # httptools callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._head_count = 0
        self._reading_head = True
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.limits.header_count:
            self._raise(431, "headers_too_many", f"more than {self.limits.header_count} headers")
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._disarm_head_timer()
        super().on_headers_complete()
        if len(self.pipeline) > self.limits.pipelined:
            # A client that sends this many requests without reading an answer is not
            # one the router owes answers to: nothing more is read from it.
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm_head_timer()  # the next request's head, or an idle connection

    # bounds
    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.header_bytes:
            limit = self.limits.header_bytes
            self._raise(431, "headers_too_large", f"request line and headers over {limit} bytes")

    def _raise(self, status: int, error: str, problem: str) -> None:
        self._refused = _head_problem(status, error, problem)
        raise self._refused

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._head_timed_out
            )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._reading_head:
            timeout = self.limits.header_timeout_s
            late = f"request head not sent within {timeout:g} s"
            self._refuse(_head_problem(408, "head_timeout", late))
        elif self.cycle is None or self.cycle.response_complete:
            self.transport.close()  # idle: no request came

    def _refuse(self, problem: RequestProblem) -> None:
        """Answer `problem` (unless an answer is being written) and close."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_answer(problem))
        self.transport.close()
