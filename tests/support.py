"""Helpers shared by the tests: servers started and stopped through the host layer's
supervisor, stand-in model servers, a misbehaving TCP backend, Docker containers, and
MLflow models logged with explicit URIs.

Nothing here sets environment variables or MLflow's process-wide URIs: a child process
gets its environment from `Supervisor.start(env=...)`, MLflow is called with explicit
tracking and registry URIs, and MLflow calls that need credentials run in a child process
whose environment carries them. Kept light at import (no MLflow, no BentoML, no Pulumi):
uvicorn child processes import this module for `echo_backend`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.host import docker_cli
from fleet.host.environment import child_env
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


def until(done: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll `done` every `interval_s` until it holds or `timeout_s` has passed; whether it
    held (for a server's counters, which it updates after it answered)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def metric_samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called `name` (`fleet_router_shadow_calls_total`) in `url`/metrics:
    sorted label pairs -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


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


def image_ids() -> set[str]:
    """The ids of every image the engine holds (none when no engine answers)."""
    listed = docker_cli.run("images", "--all", "--quiet", "--no-trunc", timeout=60)
    return set(listed.stdout.decode().split()) if listed.returncode == 0 else set()


@contextlib.contextmanager
def images_removed_after() -> Iterator[None]:
    """Remove, when the block ends, every image the engine holds that it did not hold
    when the block began: the tests build model, router and deps images under fresh tags
    each run, and an engine that kept them would fill the disk run after run."""
    before = image_ids() if docker_problem() is None else None
    try:
        yield
    finally:
        if before is not None:
            made = sorted(image_ids() - before)
            if made:
                docker_cli.run("rmi", "--force", *made, timeout=600)


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
    artifacts: Path | None,
    signature: Any = None,
    pip_requirements: Sequence[str] = (),
) -> str:
    """Save `python_model` as a pyfunc model, log it to a new run of `experiment` and
    register it as the next version of `name`, all at `uri`; the run id.

    Only `MlflowClient(tracking_uri=uri, registry_uri=uri)`: MLflow's process-wide URIs
    (what `mlflow.start_run` and `log_model` use) are never read or set. `artifacts` None:
    the tracking server's own artifact store (proxied, behind its credentials).
    """
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.get_experiment_by_name(experiment)
    location = artifacts.as_uri() if artifacts is not None else None
    experiment_id = (
        found.experiment_id
        if found
        else client.create_experiment(experiment, artifact_location=location)
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


# --- a real image registry (scripts/test-registry.sh, started by .ci/run) ----------------


@dataclass(frozen=True)
class OciRegistry:
    """The tests' OCI registry: Debian's docker-registry with htpasswd auth."""

    server: str
    """`host:port`, plain HTTP on loopback (Docker allows that for 127.0.0.0/8)."""
    username: str
    password: str = field(repr=False)

    def login(self, password: str | None = None) -> docker_cli.RegistryLogin:
        """Its credentials (with another `password`, to be refused)."""
        return docker_cli.RegistryLogin(self.server, self.username, password or self.password)

    def get(self, path: str, accept: str = "") -> tuple[int, dict[str, str], bytes]:
        """`GET http://<server><path>` with the credentials: status, headers, body."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        if accept:
            headers["Accept"] = accept
        request = urllib.request.Request(f"http://{self.server}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


def oci_registry() -> OciRegistry | str:
    """The registry named by FLEET_TEST_REGISTRY (and _USER, _PASSWORD), or why there is
    none to use: not configured, or not answering with those credentials."""
    server = os.environ.get("FLEET_TEST_REGISTRY")
    if not server:
        return (
            "no test registry: set FLEET_TEST_REGISTRY, FLEET_TEST_REGISTRY_USER and "
            "FLEET_TEST_REGISTRY_PASSWORD (scripts/test-registry.sh starts one; .ci/run does)"
        )
    found = OciRegistry(
        server,
        os.environ.get("FLEET_TEST_REGISTRY_USER", ""),
        os.environ.get("FLEET_TEST_REGISTRY_PASSWORD", ""),
    )
    try:
        status, _, _ = found.get("/v2/")
    except OSError as exc:
        return f"the test registry {server} does not answer: {exc}"
    if status != 200:
        return f"the test registry {server} answers GET /v2/ with HTTP {status} to our login"
    return found


# --- an MLflow tracking server that requires credentials ---------------------------------


@dataclass(frozen=True)
class AuthMlflow:
    """`mlflow server --app-name basic-auth` on loopback, and its admin's login."""

    url: str
    admin: str
    admin_password: str = field(repr=False)

    def registry(self, username: str | None = None, password: str | None = None) -> Registry:
        """The server read as `username` (default: the admin)."""
        if username is None:
            username, password = self.admin, self.admin_password
        return Registry(self.url, username=username, password=password)

    def add_user(self, username: str, password: str) -> None:
        """A user with the server's default permission (READ), made by the admin."""
        import httpx

        answer = httpx.post(
            f"{self.url}/api/2.0/mlflow/users/create",
            json={"username": username, "password": password},
            auth=(self.admin, self.admin_password),
            timeout=30,
        )
        answer.raise_for_status()


def start_auth_mlflow(servers: Servers, home: Path, timeout_s: float = 180) -> AuthMlflow:
    """An MLflow tracking server under `home` that requires basic auth for every call,
    artifacts included (served by the server itself: `mlflow-artifacts:/`).

    MLflow ships no admin password: the auth app creates the admin from its config on
    first start (`mlflow/server/auth/basic_auth.ini`). Flask-WTF must be installed (the
    `mlflow[auth]` extra, in the dev group)."""
    home.mkdir(parents=True, exist_ok=True)
    admin, password = "admin", "admin-" + secrets.token_hex(8)
    config = home / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{home / 'auth.db'}\n"
        f"admin_username = {admin}\n"
        f"admin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"]
    argv += ["--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"]
    argv += ["--artifacts-destination", str(home / "artifacts")]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    served = servers.process("mlflow-basic-auth", argv, port, env).launch()
    assert served.child is not None
    for child, why in wait_ready([served.child], timeout_s, path="/health"):
        log = child.log_tail(30)
        served.stop()
        raise RuntimeError(f"the MLflow server never got ready: {why}; its log:\n{log}")
    return AuthMlflow(served.url, admin, password)


_REGISTER = """
import json, sys
import mlflow.pyfunc, numpy as np, pandas as pd
from mlflow.models import infer_signature
from tests.support import register_pyfunc

class Scaled(mlflow.pyfunc.PythonModel):
    # Defined in __main__, so it travels inside the model by value.
    def __init__(self, factor):
        self.factor = factor

    def predict(self, context, model_input, params=None):
        return model_input["x"].to_numpy(dtype="float64") * self.factor

uri = sys.argv[1]
x = pd.DataFrame({"x": [0.5, 1.5, 2.5]})
for i, name in enumerate(json.loads(sys.argv[2])):
    model = Scaled(float(i + 1))
    signature = infer_signature(x, model.predict(None, x))
    register_pyfunc(uri, name, model, experiment="fleet-tests", artifacts=None,
                    signature=signature)
    print("registered", name, flush=True)
"""


def register_small_models(registry: Registry, names: Sequence[str]) -> None:
    """Register one version of a tiny pyfunc model (`x` -> `x * factor`) under each of
    `names` at `registry`, from a child process whose environment carries its URI and
    credentials (MLflow reads basic-auth credentials from the environment only)."""
    argv = [sys.executable, "-c", _REGISTER, registry.uri, json.dumps(list(names))]
    proc = subprocess.run(
        argv, env=child_env(registry.env()), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"registering {list(names)} failed:\n{proc.stderr[-3000:]}")


# --- a dynamic provider as the Pulumi engine runs it ---------------------------------------

PROVIDER_URN = "urn:pulumi:test::model-fleet::pulumi-python:dynamic:Resource::x"


def secret(value: str) -> dict[str, str]:
    """`value` as a secret travels on Pulumi's wire."""
    from pulumi.runtime import rpc

    return {rpc._special_sig_key: rpc._special_secret_sig, "value": value}


def to_wire(props: dict[str, Any]) -> Any:
    """`props` serialized by Pulumi's own rpc module, as the engine sends them (a Struct).

    On a loop of its own: `asyncio.run` would leave the thread without an event loop."""
    from pulumi.runtime import rpc

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(rpc.serialize_properties(props, {}))
    finally:
        loop.close()


def from_wire(struct: Any, keep_unknowns: bool = False) -> dict[str, Any]:
    """A Struct deserialized by Pulumi's rpc module, as the provider process does it
    (`keep_unknowns` as in its Check and Diff)."""
    from pulumi.runtime import rpc

    return dict(rpc.deserialize_properties(struct, keep_unknowns))


@contextlib.contextmanager
def dynamic_provider(cwd: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    """`python -m pulumi.dynamic` (the process the engine starts for dynamic providers;
    it serves calls on 4 threads) in `cwd` with `env` added, and a gRPC stub to call it.

    The project is on its PYTHONPATH (providers are pickled by reference). Its stderr
    goes to `log`."""
    import grpc
    from pulumi.runtime.proto import provider_pb2_grpc

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulumi.dynamic"],
            cwd=cwd,
            env=child_env({**(env or {}), "PYTHONPATH": path}),
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the provider did not start: {log.read_text()}")
    channel = grpc.insecure_channel(f"127.0.0.1:{int(line)}")
    try:
        yield provider_pb2_grpc.ResourceProviderStub(channel)
    finally:
        channel.close()
        proc.kill()
        proc.wait()


def provider_create(
    stub: Any, props: dict[str, Any], impl: Any, timeout_s: float
) -> tuple[str, dict[str, Any]]:
    """`Create` over gRPC with `props` and the pickled provider `impl`; (id, outputs)."""
    from pulumi.dynamic.dynamic import serialize_provider
    from pulumi.runtime import proto

    request = proto.CreateRequest(
        urn=PROVIDER_URN,
        properties=to_wire({**props, "__provider": serialize_provider(impl)}),
        timeout=timeout_s,
    )
    answer = stub.Create(request, timeout=timeout_s)
    return str(answer.id), from_wire(answer.properties)
