"""The pooled proxy to the model servers: one keep-alive client for every backend.

Every call is bounded by its route's timeout as a whole (connect, pool wait, send and
receive together), so a hanging backend costs its callers at most that long and
holds no more than their connections; other routes keep their own.
"""

from __future__ import annotations

import asyncio
import json

import httpx

_JSON = {"content-type": "application/json"}


class BackendError(Exception):
    """A backend call that did not give predictions; `status` is what the caller gets."""

    def __init__(self, status: int, error: str, message: str, kind: str) -> None:
        self.status = status
        self.error = error
        self.message = message
        self.kind = kind
        super().__init__(message)


class Proxy:
    """POSTs record batches to model servers over one shared connection pool."""

    def __init__(self, max_connections: int = 512, max_keepalive: int = 256) -> None:
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_keepalive
            ),
            # Loopback and cluster traffic only: no proxies from the environment.
            trust_env=False,
        )

    async def predict(self, backend: str, records: bytes, timeout_s: float) -> bytes:
        """The backend's JSON array of predictions for `records` (a JSON array)."""
        url = f"{backend}/predict"
        body = b'{"records":' + records + b"}"
        try:
            async with asyncio.timeout(timeout_s):
                response = await self.client.post(
                    url, content=body, headers=_JSON, timeout=timeout_s
                )
        except (TimeoutError, httpx.TimeoutException):
            raise BackendError(
                504,
                "backend_timeout",
                f"model server {backend} gave no answer in {timeout_s:g} s",
                "timeout",
            ) from None
        except httpx.ConnectError as exc:
            raise BackendError(
                503,
                "backend_unavailable",
                f"cannot connect to model server {backend}: {exc}",
                "connect",
            ) from None
        except httpx.TransportError as exc:
            raise BackendError(
                502,
                "backend_error",
                f"model server {backend} broke the connection: {exc!r}",
                "transport",
            ) from None
        content = response.content
        if response.status_code == 200 and content.lstrip()[:1] == b"[":
            return content
        raise _status_error(backend, response.status_code, content)

    async def aclose(self) -> None:
        await self.client.aclose()


def _status_error(backend: str, status: int, content: bytes) -> BackendError:
    detail = _message(content)
    if status == 200:
        return BackendError(
            502,
            "backend_error",
            f"model server {backend} did not answer a JSON array: {detail}",
            "bad_response",
        )
    if 400 <= status < 500:
        # The caller's input reached the model server and was refused there: pass it on.
        return BackendError(status, "backend_rejected", detail, "rejected")
    if status == 503:
        return BackendError(
            503,
            "backend_unavailable",
            f"model server {backend} is unavailable: {detail}",
            "unavailable",
        )
    return BackendError(
        502, "backend_error", f"model server {backend} answered {status}: {detail}", "status"
    )


def _message(content: bytes, limit: int = 2000) -> str:
    """The backend's error message: a JSON body's text as is, else the raw text."""
    text = content[:limit].decode("utf-8", errors="replace")
    try:
        value = json.loads(content)
    except ValueError:
        return text
    return json.dumps(value)[:limit] if not isinstance(value, str) else value[:limit]
