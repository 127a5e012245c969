"""Helpers shared by the tests: servers started and stopped through the host layer's
supervisor, stand-in model servers, a misbehaving TCP backend, Docker containers, and
MLflow models logged with explicit URIs.

Nothing here sets environment variables or MLflow's process-wide URIs: a child process
gets its environment from `Supervisor.start(env=...)`, MLflow is called with explicit
tracking and registry URIs. Kept light at import (no MLflow, no BentoML): uvicorn child
processes import this module for `echo_backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.host import docker_cli
from fleet.host.model_server import server_command
from fleet.host.model_store import ModelStore
from fleet.host.processes import Child, Endpoint, Supervisor, free_port, wait_ready
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.router.proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent

# --- child processes --------------------------------------------------------------------


@dataclass
class Served:
    """A server in a child process on 127.0.0.1:port, restartable on the same port.

    Child processes, not threads: a router, a backend and a load loop sharing one
    interpreter's GIL slow each other down by orders of magnitude.
    """

    name: str
    argv: list[str]
    port: int
    env: dict[str, str]
    supervisor: Supervisor
    child: Child | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> Served:
        """Start the process without waiting for it (then `wait_for` it)."""
        if self.child is not None:
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        log_name = self.name if self.starts == 1 else f"{self.name}-start{self.starts}"
        self.child = self.supervisor.start(log_name, self.argv, self.env, self.url)
        return self

    def start(self, timeout_s: float = 60) -> Served:
        """Start the process and wait until `GET /readyz` answers 200."""
        self.launch()
        wait_for([self], timeout_s)
        return self

    def stop(self) -> None:
        """Stop the process (its whole group); a no-op when it is not running."""
        if self.child is None:
            return
        child, self.child = self.child, None
        child.stop(grace_s=10)
        # Stopped: the supervisor must not signal its (possibly reused) process group again.
        self.supervisor.children.remove(child)


def wait_for(group: Sequence[Served], timeout_s: float) -> None:
    """Wait until every server of `group` answers `GET /readyz` with 200, all at once.

    Raises RuntimeError naming each server that did not, why, and its last log lines;
    those that did not get ready are stopped.
    """
    children = {id(s.child): s for s in group if s.child is not None}
    failed = wait_ready([s.child for s in group if s.child is not None], timeout_s)
    if not failed:
        return
    lines = []
    for child, why in failed:
        lines += [f"{child.name} never ready: {why}; its log:", child.log_tail(30)]
        children[id(child)].stop()
    raise RuntimeError("\n".join(lines))


class Servers:
    """The child processes of one test module, each stopped at the end (`stop_all`)."""

    def __init__(self, log_dir: Path) -> None:
        self.supervisor = Supervisor(log_dir=log_dir)
        self.names: Counter[str] = Counter()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        self.supervisor.stop_all()

    def process(
        self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None
    ) -> Served:
        """`argv` (listening on 127.0.0.1:port) with our environment plus `env`; not started.

        `name` names its log (`<name>.log`), made unique within the module."""
        self.names[name] += 1
        if self.names[name] > 1:
            name = f"{name}-{self.names[name]}"
        return Served(name, argv, port, env or {}, self.supervisor)

    def asgi(self, target: str, port: int | None = None) -> Served:
        """uvicorn serving `module:attribute` (importable from the repository root)."""
        port = port or free_port()
        argv = [sys.executable, "-m", "uvicorn", target, "--app-dir", str(ROOT)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        argv += ["--no-access-log", "--timeout-graceful-shutdown", "1"]
        return self.process(target.rsplit(":", 1)[-1], argv, port)

    def echo(self, port: int | None = None) -> Served:
        """The echo model-server stand-in (`echo_backend`)."""
        return self.asgi(ECHO, port)

    def router(self, config: dict[str, Any], path: Path, port: int | None = None) -> Served:
        """`python -m fleet.router` with `config` written to `path`."""
        path.write_text(json.dumps(config))
        port = port or free_port()
        argv = [sys.executable, "-m", "fleet.router", "--config", str(path)]
        argv += ["--port", str(port), "--log-level", "warning"]
        return self.process("router", argv, port)

    def model_server(
        self, resolved: ResolvedModel, store: ModelStore, registry: Registry
    ) -> Served:
        """The BentoML model server of `resolved` as `fleet serve` runs it, its model
        imported into `store` from `registry` first; not started (model servers take a
        while: launch several, then `wait_for` them together)."""
        tag = store.import_model(resolved, registry)
        port = free_port()
        argv, env = server_command(resolved, port, store, bento_model_tag=tag)
        return self.process(resolved.name, argv, port, env)


def by_name(resolved: Sequence[ResolvedModel], name: str) -> ResolvedModel:
    return next(r for r in resolved if r.name == name)


# --- the echo model-server stand-in -----------------------------------------------------

ECHO = "tests.support:echo_backend"
"""uvicorn target of `echo_backend`."""


async def echo_backend(scope: Any, receive: Any, send: Any) -> None:
    """A stand-in model server. The first path segment names the model it plays:

    `hang*` never answers, `fail*` answers 500; a record with x == 13 gets a 422 the
    way a model server refuses a record; otherwise one prediction per record:
    {"model": <segment>, "record": <the record as received>}. Any GET is a probe (200).
    """
    assert scope["type"] == "http"
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    model = scope["path"].strip("/").split("/")[0]
    status, out = 200, b""
    if scope["method"] != "POST":
        out = b'{"status": "ok"}'  # a probe
    elif model.startswith("hang"):
        await asyncio.sleep(3600)
    elif model.startswith("fail"):
        status, out = 500, b'{"detail": "model crashed"}'
    else:
        records = json.loads(body)["records"]
        if any(r.get("x") == 13.0 for r in records):
            status, out = 422, json.dumps({"detail": "records.0.x: 13 is out of range"}).encode()
        else:
            out = json.dumps([{"model": model, "record": r} for r in records]).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})


# --- the profiler's stand-in model server (tests/integration/test_profiler_stub.py) -----

STUB = ROOT / "tests" / "integration" / "test_profiler_stub.py"
STUB_COLUMNS: list[dict[str, Any]] = [
    {"name": "distance", "type": "double", "required": True},
    {"name": "hour", "type": "long", "required": True},
    {"name": "night", "type": "boolean", "required": False},
    {"name": "city", "type": "string", "required": True},
]
"""The stand-in's signature."""


def stub_argv(port: int, mode: str = "ok", ballast_mib: int = 0) -> list[str]:
    """The stand-in serving `STUB_COLUMNS` on 127.0.0.1:port (modes: see the script)."""
    columns = json.dumps(STUB_COLUMNS)
    return [sys.executable, str(STUB), str(port), mode, str(ballast_mib), columns]


# --- a TCP backend whose misbehaviour a test controls ------------------------------------


@dataclass
class Seen:
    """What the server saw: connections opened, requests per connection, heads."""

    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


def response(body: bytes, *, status: int = 200, extra: bytes = b"") -> bytes:
    """An HTTP/1.1 answer with a JSON body."""
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


Behaviour = Callable[[int, Seen, asyncio.StreamWriter], Awaitable[bool]]
"""behaviour(request number on this connection, seen, writer) -> keep the connection?"""


async def answer(n: int, seen: Seen, writer: asyncio.StreamWriter) -> bool:
    """Answer every request with `[0.5]`."""
    writer.write(response(b"[0.5]"))
    return True


async def serve(behaviour: Behaviour) -> tuple[asyncio.Server, Seen, str]:
    """A server in the running event loop answering with `behaviour`; (server, seen, URL)."""
    seen = Seen()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        seen.open_now += 1
        seen.most_open = max(seen.most_open, seen.open_now)
        try:
            n = 0
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                seen.heads.append(head)
                seen.bodies.append(await reader.readexactly(length))
                n += 1
                if not await behaviour(n, seen, writer):
                    return
                await writer.drain()
        finally:
            seen.open_now -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, seen, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def backend(behaviour: Behaviour, **pool: Any) -> AsyncIterator[tuple[Proxy, str, Seen]]:
    """(a Proxy with `pool` settings, the server's URL, what it saw) while the server runs."""
    server, seen, url = await serve(behaviour)
    proxy = Proxy(**{"max_connections": 8, **pool})
    try:
        yield proxy, url, seen
    finally:
        await proxy.aclose()
        server.close()


# --- Docker ------------------------------------------------------------------------------


def docker_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers `docker info`."""
    try:
        info = docker_cli.run("info", timeout=20)
    except OSError as exc:
        return f"no Docker engine reachable ({docker_cli.docker()}: {exc})"
    if info.returncode != 0:
        err = info.stderr.decode(errors="replace").strip()[:200]
        return f"no Docker engine answers `{docker_cli.docker()} info`: {err}"
    return None


@contextlib.contextmanager
def container(*run_args: str) -> Iterator[str]:
    """`docker run -d RUN_ARGS...`; its id while the block runs, then it is removed."""
    started = docker_cli.run("run", "-d", *run_args)
    if started.returncode != 0:
        raise RuntimeError(f"docker run failed: {started.stderr.decode(errors='replace')}")
    cid = started.stdout.decode().strip()
    try:
        yield cid
    finally:
        docker_cli.run("rm", "-f", cid)


def container_ready(cid: str, url: str, timeout_s: float) -> None:
    """Wait for the container's `url` to answer /readyz; fail with its log if it does not."""

    def running() -> bool:
        state = docker_cli.run("inspect", "-f", "{{.State.Running}}", cid)
        return state.stdout.decode().strip() == "true"

    for _, why in wait_ready([Endpoint(url, running)], timeout_s):
        logs = docker_cli.run("logs", cid)
        out = logs.stdout.decode(errors="replace")[-2000:]
        err = logs.stderr.decode(errors="replace")[-2000:]
        raise AssertionError(f"container {cid[:12]} never ready: {why}\n{out}{err}")


# --- MLflow, with explicit URIs ----------------------------------------------------------


def register_pyfunc(
    uri: str,
    name: str,
    python_model: Any,
    *,
    experiment: str,
    artifacts: Path,
    signature: Any = None,
    pip_requirements: Sequence[str] = (),
) -> str:
    """Save `python_model` as a pyfunc model, log it to a new run of `experiment` and
    register it as the next version of `name`, all at `uri`; the run id.

    Only `MlflowClient(tracking_uri=uri, registry_uri=uri)`: MLflow's process-wide URIs
    (what `mlflow.start_run` and `log_model` use) are never read or set.
    """
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found
        else client.create_experiment(experiment, artifact_location=artifacts.as_uri())
    )
    run = client.create_run(experiment_id, run_name=name)
    run_id = str(run.info.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(path),
            python_model=python_model,
            signature=signature,
            pip_requirements=list(pip_requirements),
        )
        client.log_artifacts(run_id, str(path), "model")
    client.set_terminated(run_id)
    with contextlib.suppress(MlflowException):  # already registered
        client.create_registered_model(name)
    client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id)
    return run_id


def local_model_dir(uri: str, name: str, alias: str) -> Path:
    """The local folder of the files of `name@alias` in the (local) registry at `uri`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = str(client.get_model_version_by_alias(name, alias).source)
    if source.startswith("models:/m-"):  # an MLflow 3 logged model
        source = str(client.get_logged_model(source.removeprefix("models:/")).artifact_location)
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"model '{name}@{alias}': {source} is not a local folder")
    return Path(urllib.request.url2pathname(parsed.path))
