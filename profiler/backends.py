"""Where the model server runs while it is profiled, and the wait until it is ready.

A backend starts one server for one model and hands back a `Server`: its URL, a memory
probe, whether it has exited, its last log lines, and a way to stop it. `process` runs the
server as local processes from the current virtualenv (contract: fleet.serving.launch);
`docker` runs the model image as a container (`profiler.docker`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx
import psutil

from fleet.registry import ResolvedModel
from profiler.gate import ProfileGateError
from profiler.memory import process_tree_pss

CommandFactory = Callable[[ResolvedModel, str, int], tuple[list[str], dict[str, str]]]
"""(resolved, tracking URI, port) -> argv and extra environment of one model server."""


class Server(Protocol):
    """A running model server under profile."""

    @property
    def base_url(self) -> str: ...
    @property
    def memory_source(self) -> str: ...
    def memory_bytes(self) -> int: ...
    def exited(self) -> str | None: ...
    def log_tail(self, lines: int) -> list[str]: ...
    def stop(self) -> None: ...


class Backend(Protocol):
    """Starts model servers; `name` goes into the report."""

    name: str

    def start(self, resolved: ResolvedModel, tracking_uri: str) -> Server: ...


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bento_command(
    resolved: ResolvedModel, tracking_uri: str, port: int
) -> tuple[list[str], dict[str, str]]:
    """The model server of fleet.serving, with the model imported into BentoML first."""
    from fleet.serving.launch import prepare_model, server_command

    tag = prepare_model(resolved, tracking_uri)
    return server_command(resolved, port, bento_model_tag=tag)


class ProcessBackend:
    """The model server as local processes; memory is PSS over the process tree."""

    name = "process"

    def __init__(self, command: CommandFactory = bento_command) -> None:
        self.command = command

    def start(self, resolved: ResolvedModel, tracking_uri: str) -> ProcessServer:
        port = free_port()
        argv, env = self.command(resolved, tracking_uri, port)
        fd, log_name = tempfile.mkstemp(prefix=f"profile-{resolved.model.k8s_name}-", suffix=".log")
        try:
            # A session of its own, so stop() can end the server's whole process group.
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(fd)
            Path(log_name).unlink(missing_ok=True)
            raise ProfileGateError(
                resolved.name, [f"the server could not be started ({argv[0]}): {exc}"]
            ) from exc
        os.close(fd)
        return ProcessServer(proc, f"http://127.0.0.1:{port}", Path(log_name))


class ProcessServer:
    """A model server started by ProcessBackend."""

    memory_source = "pss (process tree)"

    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log = log

    def memory_bytes(self) -> int:
        return process_tree_pss(self.proc.pid)

    def exited(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"the server process exited with code {code}"

    def log_tail(self, lines: int) -> list[str]:
        return tail_lines(self.log, lines)

    def stop(self) -> None:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # Workers that left the group would outlive us: end the ones we listed by pid.
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.log.unlink(missing_ok=True)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def tail_lines(path: Path, lines: int, max_bytes: int = 65536) -> list[str]:
    """The last `lines` non-empty lines of a text file (reads at most its last 64 KiB)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def wait_ready(
    server: Server, model: str, timeout_s: float, *, log_lines: int = 30, poll_s: float = 0.25
) -> float:
    """Poll `GET /readyz` until it answers 200; returns the seconds it took.

    Raises ProfileGateError with the server's last log lines when the server exits first
    or is not ready within `timeout_s`.
    """
    start = time.monotonic()
    last = "no answer yet"
    with httpx.Client(base_url=server.base_url, timeout=min(5.0, timeout_s)) as client:
        while True:
            gone = server.exited()
            if gone is not None:
                raise ProfileGateError(
                    model,
                    [f"server never ready: {gone} before GET /readyz answered 200"],
                    log_tail=server.log_tail(log_lines),
                )
            try:
                response = client.get("/readyz")
                if response.status_code == 200:
                    return time.monotonic() - start
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            if time.monotonic() - start >= timeout_s:
                raise ProfileGateError(
                    model,
                    [
                        f"server never ready: GET {server.base_url}/readyz did not answer "
                        f"200 within {timeout_s:g} s (last: {last})"
                    ],
                    log_tail=server.log_tail(log_lines),
                )
            time.sleep(poll_s)
