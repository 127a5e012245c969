"""Local processes for `fleet serve`: start, wait for readiness, stop, never orphan.

Every child runs in its own session (process group), so stopping it stops the worker
processes it forked too. On Linux each child also gets PR_SET_PDEATHSIG, so that even a
`fleet serve` killed with SIGKILL takes its children with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One started process: a model server or the router."""

    name: str
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    ready: bool = False
    error: str = ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Supervisor:
    """Starts children, waits until they answer, and stops every one of them."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], url: str) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name=name, url=url, log_path=log_path, proc=proc)
        self.children.append(child)
        return child

    def wait_ready(
        self,
        children: Iterable[Child],
        path: str,
        timeout_s: float,
        on_ready: Callable[[Child], None] = lambda _: None,
    ) -> None:
        """Poll `path` on every child until it answers 200, exits, or the time is up."""
        pending = list(children)
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while pending and time.monotonic() < deadline:
                for child in list(pending):
                    if not child.alive():
                        child.error = f"exited with code {child.proc.returncode}"
                        pending.remove(child)
                    elif _answers(client, child.url + path):
                        child.ready = True
                        pending.remove(child)
                        on_ready(child)
                if pending:
                    time.sleep(0.25)
        for child in pending:
            child.error = f"not ready after {timeout_s:.0f} s"

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process group, then SIGKILL what is still there after `grace_s`."""
        for child in self.children:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for child in self.children:
            _signal_group(child.proc, signal.SIGKILL)
            child.proc.wait()
        self.children.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # The group outlives its leader when workers linger, so signal it even after exit.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False
