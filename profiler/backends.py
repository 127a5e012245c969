"""Where the model server runs while it is profiled.

A backend starts one server for one model and hands back a `Server`: its URL, a memory
probe, whether it has exited, its last log lines, and a way to stop it. `process` runs the
server as local processes from the current virtualenv (`fleet.host.model_server`) under
the host layer's supervisor; `docker` runs the model image as a container
(`profiler.docker`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from fleet.host.model_server import server_command
from fleet.host.model_store import ModelStore
from fleet.host.processes import Child, Supervisor, free_port
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from profiler.gate import ProfileGateError
from profiler.memory import process_tree_pss

CommandFactory = Callable[[ResolvedModel, Registry | None, int], tuple[list[str], dict[str, str]]]
"""(resolved, registry, port) -> argv and extra environment of one model server."""


class Server(Protocol):
    """A running model server under profile."""

    @property
    def url(self) -> str: ...
    @property
    def memory_source(self) -> str: ...
    def memory_bytes(self) -> int: ...
    def exited(self) -> str | None: ...
    def log_tail(self, lines: int) -> list[str]: ...
    def stop(self) -> None: ...


class Backend(Protocol):
    """Starts model servers; `name` goes into the report."""

    name: str

    def start(self, resolved: ResolvedModel, registry: Registry | None) -> Server: ...


def bento_command(store: ModelStore) -> CommandFactory:
    """The model server of fleet.serving, with the model imported into `store` first."""

    def command(
        resolved: ResolvedModel, registry: Registry | None, port: int
    ) -> tuple[list[str], dict[str, str]]:
        if registry is None:
            raise ValueError(f"model '{resolved.name}': the process backend needs a registry")
        tag = store.import_model(resolved, registry)
        return server_command(resolved, port, store, bento_model_tag=tag)

    return command


class ProcessBackend:
    """The model server as local processes; memory is PSS over the process tree."""

    name = "process"

    def __init__(self, command: CommandFactory | None = None) -> None:
        self.command = command or bento_command(ModelStore.from_environment())

    def start(self, resolved: ResolvedModel, registry: Registry | None) -> ProcessServer:
        port = free_port()
        argv, env = self.command(resolved, registry, port)
        logs = Path(tempfile.mkdtemp(prefix=f"profile-{resolved.model.k8s_name}-"))
        supervisor = Supervisor(log_dir=logs)
        try:
            child = supervisor.start("server", argv, env, f"http://127.0.0.1:{port}")
        except OSError as exc:
            shutil.rmtree(logs, ignore_errors=True)
            raise ProfileGateError(
                resolved.name, [f"the server could not be started ({argv[0]}): {exc}"]
            ) from exc
        return ProcessServer(child, logs)


class ProcessServer:
    """A model server started by ProcessBackend."""

    memory_source = "pss (process tree)"

    def __init__(self, child: Child, logs: Path) -> None:
        self.child = child
        self.logs = logs

    @property
    def url(self) -> str:
        return self.child.url

    def memory_bytes(self) -> int:
        return process_tree_pss(self.child.pid)

    def exited(self) -> str | None:
        code = self.child.proc.poll()
        return None if code is None else f"the server process exited with code {code}"

    def log_tail(self, lines: int) -> list[str]:
        return self.child.log_lines(lines)

    def stop(self) -> None:
        self.child.stop(grace_s=15)
        shutil.rmtree(self.logs, ignore_errors=True)
