"""Which model servers answer: the router's own view, for its `/readyz` and metrics.

The router reads its routes config once, at start; the model servers behind it come and
go (a pod rolls, `fleet serve` restarts a server that died). Every `interval_s` the router
asks each model server `GET <backend>/readyz`; one that does not answer 200 within
`timeout_s` is down until it does. Its routes keep being tried (a call to a server that
refuses connections is a 503 at once), and `/readyz` names them, while the router itself
stays ready: the rest of the fleet is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.parse
from collections.abc import Callable

log = logging.getLogger("fleet.router")


async def probe(backend: str, timeout_s: float) -> str | None:
    """None when `GET <backend>/readyz` answers 200 within `timeout_s`, else why not."""
    url = urllib.parse.urlsplit(backend)
    secure = url.scheme == "https"
    port = url.port or (443 if secure else 80)
    path = url.path.rstrip("/") + "/readyz"
    head = f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n"
    context = ssl.create_default_context() if secure else None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(url.hostname, port, ssl=context)
            try:
                writer.write(head.encode("latin-1"))
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return f"GET {path} got no answer in {timeout_s:g} s"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    parts = line.split()
    if len(parts) >= 2 and parts[1] == b"200":
        return None
    got = line.decode("latin-1").strip() or "nothing"
    return f"GET {path} answered {got}"


class BackendHealth:
    """The health of every backend, checked every `interval_s` while `run` runs."""

    def __init__(
        self,
        backends: list[str],
        interval_s: float,
        on_change: Callable[[str, str | None], None] = lambda _b, _p: None,
    ) -> None:
        self.backends = list(dict.fromkeys(backends))
        self.interval_s = interval_s
        self.timeout_s = min(interval_s, 2.0)
        self.down: dict[str, str] = {}
        """Backend URL -> why it is down, for those that failed their last check."""
        self.on_change = on_change

    async def check(self) -> None:
        """Probe every backend once, all at once."""
        found = await asyncio.gather(*(probe(b, self.timeout_s) for b in self.backends))
        for backend, problem in zip(self.backends, found, strict=True):
            was = self.down.get(backend)
            if problem is None:
                self.down.pop(backend, None)
            else:
                self.down[backend] = problem
            if (was is None) != (problem is None):
                self.on_change(backend, problem)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not end the checks for good
                log.exception("health check of the model servers failed")
            await asyncio.sleep(self.interval_s)
