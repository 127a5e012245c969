"""Where the model server runs while it is profiled.

A backend starts one server for one model and hands back a `Server`: its URL, where each
copy of the model answers, a memory probe, whether it has exited, its last log lines, and
a way to stop it. `process` runs the server as local processes from the current
virtualenv (`fleet.host.model_server`) under the host layer's supervisor; `docker` runs
the model image as a container (`profiler.docker`).

Asked for `copies=2`, a backend starts a pack server (`fleet.serving`, `FLEET_PACK`) that
serves the same model twice, under its name and under `<name>--twin` (`copy_names`): the
profiler's pack measurement (`profiler.run`, docs/profiler.md "Pack measurement").
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from fleet.host.model_server import pack_command, pack_path, server_command
from fleet.host.model_store import ModelStore
from fleet.host.processes import Child, Supervisor, free_port
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from profiler.gate import ProfileGateError
from profiler.memory import process_tree_pss, process_tree_uss

CommandFactory = Callable[[ResolvedModel, Registry | None, int], tuple[list[str], dict[str, str]]]
"""(resolved, registry, port) -> argv and extra environment of one model server."""

PackFactory = Callable[
    [ResolvedModel, Registry | None, int, Sequence[str]], tuple[list[str], dict[str, str]]
]
"""(resolved, registry, port, names) -> argv and extra environment of one pack server that
serves `resolved` once under each of `names`, each at `pack_path(name)`."""

TWIN_SUFFIX = "--twin"


def copy_names(name: str, copies: int) -> list[str]:
    """The names of `copies` copies of model `name` in one pack server: the model's own,
    then `<name>--twin`, `<name>--twin2`, ..."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    twins = [f"{name}{TWIN_SUFFIX}" + (str(i) if i > 1 else "") for i in range(1, copies)]
    return [name, *twins]


class Server(Protocol):
    """A running model server under profile."""

    @property
    def url(self) -> str:
        """The server's root: `GET /readyz` is ready when every model it serves is."""
        ...

    @property
    def model_urls(self) -> list[str]:
        """Where each copy of the model answers (`<it>/predict`): `[url]` for a one-model
        server, `url + pack_path(name)` per copy for a pack server."""
        ...

    @property
    def memory_source(self) -> str: ...
    def memory_bytes(self) -> int: ...
    @property
    def private_source(self) -> str: ...
    def private_bytes(self) -> int:
        """Memory that no process outside the server shares (`profiler.memory`): what the
        pack measurement compares between two servers of the same model."""
        ...

    def exited(self) -> str | None: ...
    def log_tail(self, lines: int) -> list[str]: ...
    def stop(self) -> None: ...


class Backend(Protocol):
    """Starts model servers; `name` goes into the report."""

    name: str

    def start(self, resolved: ResolvedModel, registry: Registry | None, copies: int = 1) -> Server:
        """A server of `resolved`; with `copies` > 1 a pack server of that many copies."""
        ...


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


def bento_pack_command(store: ModelStore) -> PackFactory:
    """A pack server of fleet.serving holding one model under several names, the model
    imported into `store` once (every copy loads the same folder)."""

    def command(
        resolved: ResolvedModel, registry: Registry | None, port: int, names: Sequence[str]
    ) -> tuple[list[str], dict[str, str]]:
        if registry is None:
            raise ValueError(f"model '{resolved.name}': the process backend needs a registry")
        tag = store.import_model(resolved, registry)
        copies = [(_renamed(resolved, name), tag) for name in names]
        return pack_command(copies, port, store)

    return command


def _renamed(resolved: ResolvedModel, name: str) -> ResolvedModel:
    # Only the name the pack serves it under changes (`server_config` reads resolved.name).
    return replace(resolved, model=resolved.model.model_copy(update={"name": name}))


class ProcessBackend:
    """The model server as local processes; memory is PSS over the process tree.

    `command` starts a one-model server, `pack` a pack server (for `copies` > 1); both
    default to fleet.serving on the environment's model store. A custom `command` without
    a `pack` cannot start a pack: `start(..., copies=2)` raises ValueError.
    """

    name = "process"

    def __init__(
        self, command: CommandFactory | None = None, pack: PackFactory | None = None
    ) -> None:
        if command is None and pack is None:
            store = ModelStore.from_environment()
            command, pack = bento_command(store), bento_pack_command(store)
        elif command is None:
            command = bento_command(ModelStore.from_environment())
        self.command = command
        self.pack = pack

    def start(
        self, resolved: ResolvedModel, registry: Registry | None, copies: int = 1
    ) -> ProcessServer:
        port = free_port()
        names = copy_names(resolved.name, copies)
        if copies == 1:
            argv, env = self.command(resolved, registry, port)
            paths = [""]
        elif self.pack is None:
            raise ValueError(
                f"model '{resolved.name}': this process backend has a custom server command "
                f"and no pack command, so it cannot start a pack of {copies} copies "
                "(give ProcessBackend a `pack` factory too)"
            )
        else:
            argv, env = self.pack(resolved, registry, port, names)
            paths = [pack_path(name) for name in names]
        logs = Path(tempfile.mkdtemp(prefix=f"profile-{resolved.model.k8s_name}-"))
        supervisor = Supervisor(log_dir=logs)
        try:
            child = supervisor.start("server", argv, env, f"http://127.0.0.1:{port}")
        except OSError as exc:
            shutil.rmtree(logs, ignore_errors=True)
            raise ProfileGateError(
                resolved.name, [f"the server could not be started ({argv[0]}): {exc}"]
            ) from exc
        return ProcessServer(child, logs, paths)


class ProcessServer:
    """A model server started by ProcessBackend."""

    memory_source = "pss (process tree)"
    private_source = "uss (process tree)"

    def __init__(self, child: Child, logs: Path, paths: Sequence[str] = ("",)) -> None:
        self.child = child
        self.logs = logs
        self.paths = list(paths)
        """Where each copy of the model answers, under `url`."""

    @property
    def url(self) -> str:
        return self.child.url

    @property
    def model_urls(self) -> list[str]:
        return [self.child.url + path for path in self.paths]

    def memory_bytes(self) -> int:
        return process_tree_pss(self.child.pid)

    def private_bytes(self) -> int:
        return process_tree_uss(self.child.pid)

    def exited(self) -> str | None:
        code = self.child.proc.poll()
        return None if code is None else f"the server process exited with code {code}"

    def log_tail(self, lines: int) -> list[str]:
        return self.child.log_lines(lines)

    def stop(self) -> None:
        self.child.stop(grace_s=15)
        shutil.rmtree(self.logs, ignore_errors=True)
