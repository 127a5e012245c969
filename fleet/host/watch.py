"""Keeping started children serving: health checks, restarts with backoff.

`fleet serve` starts model servers (one per model, or one per pack of models) and leaves
them running for hours. A server that exits (killed, crashed, out of memory) or stops
answering `GET /readyz` (hung, stopped) is noticed within `fails * interval` seconds, said
so (with what goes down with it, `about`), stopped whole (what is left of it holds its
port) and started again the same way, on the same port, so that the router's routes
config stays valid. Consecutive restarts wait longer each time (1 s, 2 s, 4 s ...
`max_backoff_s`); a server that stays ready for `stable_s` starts over at 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from fleet.host.processes import Child, Supervisor, reap


@dataclass
class _Kept:
    child: Child
    state: str = "up"
    """up (serving), waiting (down, restart due at `due`) or starting (since `since`)."""
    fails: int = 0
    restarts: int = 0
    """Restarts since it was last stable: the backoff exponent."""
    due: float = 0.0
    since: float = 0.0


class Keeper:
    """Watches `children` (each ready when handed over) and restarts those that fail."""

    def __init__(
        self,
        supervisor: Supervisor,
        children: Sequence[Child],
        *,
        say: Callable[[str], None],
        path: str = "/readyz",
        interval_s: float = 1.0,
        fails: int = 3,
        start_timeout_s: float = 300.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        about: Callable[[Child], str] = lambda _: "",
    ) -> None:
        """`about(child)`, when not empty, ends its DOWN and ready-again lines (what else
        goes down with it: a pack server's models)."""
        self.supervisor = supervisor
        self.say = say
        self.path = path
        self.interval_s = interval_s
        self.fails = fails
        self.start_timeout_s = start_timeout_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.about = about
        now = time.monotonic()
        self.kept = [_Kept(child, since=now) for child in children]
        self._client = httpx.Client(timeout=interval_s)
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(16, len(self.kept))))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def run(self, until: Callable[[], bool]) -> None:
        """Check every `interval_s` until `until()` is true."""
        while not until():
            started = time.monotonic()
            self.check()
            time.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def check(self) -> None:
        """One round: probe every server at once, then act on what changed."""
        answers = list(self._pool.map(self._probe, [k.child for k in self.kept]))
        now = time.monotonic()
        for kept, problem in zip(self.kept, answers, strict=True):
            self._step(kept, problem, now)
        reap(self.supervisor.children)

    def _probe(self, child: Child) -> str | None:
        """None when the child answers 200, else what is wrong."""
        child.remember()
        gone = child.exited()
        if gone is not None:
            return gone
        try:
            response = self._client.get(child.url + self.path)
        except httpx.TimeoutException:
            return f"GET {self.path} got no answer in {self.interval_s:g} s"
        except httpx.HTTPError as exc:
            return f"GET {self.path} failed ({type(exc).__name__})"
        return None if response.status_code == 200 else f"GET {self.path}: {response.status_code}"

    def _step(self, kept: _Kept, problem: str | None, now: float) -> None:
        child = kept.child
        if kept.state == "up":
            if problem is None:
                kept.fails = 0
                if kept.restarts and now - kept.since >= self.stable_s:
                    kept.restarts = 0
                return
            kept.fails += 1
            # A process that died while it was asked is said to have exited, with its
            # code, not to have dropped the connection.
            gone = child.exited()
            if gone is not None or kept.fails >= self.fails:
                self._down(kept, gone or problem, now)
        elif kept.state == "waiting":
            if now >= kept.due:
                kept.restarts += 1
                self.say(f"  restarting {child.name} (restart {kept.restarts})")
                self.supervisor.restart(child)
                kept.state, kept.since = "starting", now
        elif problem is None:
            kept.state, kept.since, kept.fails = "up", now, 0
            child.ready = True
            self.say(f"  ready again: {child.name} ({child.url}){self._about(child)}")
        elif child.exited() is not None or now - kept.since > self.start_timeout_s:
            self._down(kept, problem, now)

    def _down(self, kept: _Kept, problem: str, now: float) -> None:
        child = kept.child
        delay = min(self.max_backoff_s, 2.0**kept.restarts)
        self.say(f"  DOWN: {child.name} ({problem}); restarting in {delay:g} s{self._about(child)}")
        child.ready, child.error = False, problem
        # What is left of it (a hung server, orphaned workers) holds the port: stop it now.
        child.stop(grace_s=3.0)
        kept.state, kept.due, kept.fails = "waiting", now + delay, 0

    def _about(self, child: Child) -> str:
        about = self.about(child)
        return f"; {about}" if about else ""
