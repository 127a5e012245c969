"""The docker backend: the model image as a container in a sandbox, memory from its cgroup.

A model is code (a pyfunc is a pickle, run when the server loads it), so the container
is fenced in the way the cluster fences its pods (docs/profiler.md, "Trust boundary"):
- its own network namespace on the default `bridge` network, not the host's: it cannot
  reach services that listen on the runner's loopback only (a local registry, MLflow on
  localhost). Its server listens on 0.0.0.0:3000 inside (`--host`/`--port` in the
  image's command are set to that, the command otherwise kept as the image has it;
  `BENTOML_HOST`/`BENTOML_PORT`/`PORT` for images that take them from the environment),
  and that one port is published on 127.0.0.1 only, on a free port the profiler talks to;
- a memory limit at the model's `memory.ceiling_mib`, swap included (`--memory` equal to
  `--memory-swap`): a model that needs more is OOM-killed, and the gate says so, naming
  the ceiling (a killed worker counts too: the cgroup's `oom_kill` counter);
- no capabilities, no privilege gain through setuid files, a read-only root with a
  size-bound tmpfs at /tmp (the image's HOME and BENTOML_HOME are under it), a limit on
  processes and threads, and the pods' non-root user (`fleet.host.images.UID`).

For the pack measurement (`copies=2`) the same image runs as a pack server: `FLEET_PACK`
holds the model twice (`pack_entries`, made from the image's own `FLEET_*` settings and
`FLEET_MODEL_DIR`; the server prefers `FLEET_PACK` to them), and the memory limit is the
ceiling times the copies, as the model alone was held to the ceiling already.

Memory is read from the container's memory cgroup (v1 or v2,
`profiler.memory.find_cgroup`); the limit does not change what is measured below it. An
image the engine does not have is pulled first, logged in with the backend's registry
credentials if any (`fleet.host.docker_cli.pull`: a private client config, nothing left
behind).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import replace

from fleet.errors import BuildError
from fleet.host import docker_cli
from fleet.host.images import PORT, UID, BuildSettings, build_image
from fleet.host.model_server import pack_path
from fleet.host.processes import free_port
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.serving.config import ENV_MODEL_DIR, ENV_PACK, ConfigError, ServerConfig
from profiler.backends import copy_names
from profiler.gate import ProfileGateError
from profiler.memory import CgroupMemory, find_cgroup, parse_memory_stat

ImageFor = Callable[[ResolvedModel, Registry | None], str]
"""(resolved, registry) -> image reference to run."""

LABEL = "model-fleet.profiler=1"
NETWORK = "bridge"
"""Docker's default bridge network. An `--internal` network would also shut off the way
out, but an engine publishes no port of a container on one."""
CONTAINER_PORT = PORT
"""Where the server listens inside the container: the model image's own port."""
TMP_MIB = 256
"""Size of the tmpfs at /tmp; its pages are charged to the container's memory."""
PIDS_LIMIT = 256
"""Processes and threads of the container: a BentoML server needs a few dozen."""


def built_image(settings: BuildSettings | None = None) -> ImageFor:
    """Build (or reuse, by content hash) the model image with the host layer."""

    def image_for(resolved: ResolvedModel, registry: Registry | None) -> str:
        if registry is None:
            raise ValueError(f"model '{resolved.name}': building its image needs a registry")
        return build_image(resolved, registry, settings or BuildSettings()).image_ref

    return image_for


def _fixed_image(ref: str) -> ImageFor:
    def image_for(resolved: ResolvedModel, registry: Registry | None) -> str:
        return ref

    return image_for


class DockerBackend:
    """Runs the model image as a sandboxed container, its port published on 127.0.0.1."""

    name = "docker"

    def __init__(
        self, image: str | ImageFor | None = None, login: docker_cli.RegistryLogin | None = None
    ) -> None:
        self.image_for: ImageFor = (
            _fixed_image(image) if isinstance(image, str) else image or built_image()
        )
        self.login = login
        """Credentials for pulling the image when the engine does not have it."""

    def start(
        self, resolved: ResolvedModel, registry: Registry | None, copies: int = 1
    ) -> ContainerServer:
        image = self.image_for(resolved, registry)
        ceiling = resolved.model.settings.memory.ceiling_mib
        port = free_port()
        image_cmd, image_env = self._image_config(resolved, image)
        env = {
            "BENTOML_HOST": "0.0.0.0",
            "BENTOML_PORT": str(CONTAINER_PORT),
            "PORT": str(CONTAINER_PORT),
        }
        paths = [""]
        if copies > 1:
            try:
                names, entries = pack_entries(image_env, copies)
            except ConfigError as exc:
                raise ProfileGateError(
                    resolved.name, [f"the image {image} cannot be run as a pack server: {exc}"]
                ) from exc
            env[ENV_PACK] = json.dumps(entries)
            paths = [pack_path(name) for name in names]
        create = ["create", "--label", LABEL, *sandbox_args(port, ceiling * copies)]
        create += [f"--env={k}={v}" for k, v in env.items()]
        command = bridge_command(image_cmd, CONTAINER_PORT)
        made = _docker(*create, image, *command)
        if made.returncode != 0:
            raise ProfileGateError(
                resolved.name, [f"no container could be made from {image}: {made.stderr.strip()}"]
            )
        cid = made.stdout.strip()
        started = _docker("start", cid)
        if started.returncode != 0:
            _docker("rm", "--force", cid)
            raise ProfileGateError(
                resolved.name,
                [f"the container of {image} could not be started: {started.stderr.strip()}"],
            )
        url = f"http://127.0.0.1:{port}"
        server = ContainerServer(cid, url, ceiling_mib=ceiling, paths=paths)
        try:
            pid = _docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
            try:
                server.cgroup = find_cgroup(cid, int(pid) if pid.isdigit() else None)
            except LookupError:
                if server.exited() is None:
                    raise
                # Gone already (killed at its memory limit while starting, say): the
                # readiness wait says why, with the container's last log lines.
        except BaseException:
            server.stop()
            raise
        return server

    def _image_config(
        self, resolved: ResolvedModel, image: str
    ) -> tuple[list[str], dict[str, str]]:
        """The image's command and environment; the image is pulled first when the engine
        lacks it (a fresh runner profiling an image built and pushed elsewhere)."""
        if docker_cli.inspect(image) is None:
            try:
                docker_cli.pull(image, self.login)
            except BuildError as exc:
                problem = " ".join(str(exc).split())[:600]
                raise ProfileGateError(
                    resolved.name,
                    [f"no image {image} in the engine, and pulling it failed: {problem}"],
                ) from exc
        found = _docker("image", "inspect", "-f", "{{json .Config}}", image)
        if found.returncode != 0:
            raise ProfileGateError(resolved.name, [f"no image {image}: {found.stderr.strip()}"])
        config = json.loads(found.stdout or "null") or {}
        cmd: list[str] = config.get("Cmd") or []
        env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
        return cmd, env


def pack_entries(
    image_env: Mapping[str, str], copies: int
) -> tuple[list[str], list[dict[str, str]]]:
    """The names and the `FLEET_PACK` entries of a pack server that serves the image's one
    model `copies` times (`profiler.backends.copy_names`), each entry the image's own server
    settings (`ServerConfig`) under its copy's name, and the image's `FLEET_MODEL_DIR`.

    Raises ConfigError when the image's environment lacks them.
    """
    config = ServerConfig.from_env(image_env)
    model_dir = image_env.get(ENV_MODEL_DIR)
    if not model_dir:
        raise ConfigError(f"{ENV_MODEL_DIR} is not set in the image's environment")
    names = copy_names(config.model_name, copies)
    entries = [{**replace(config, model_name=n).to_env(), ENV_MODEL_DIR: model_dir} for n in names]
    return names, entries


class ContainerServer:
    """A model server container started by DockerBackend."""

    def __init__(
        self, container_id: str, url: str, ceiling_mib: int, paths: list[str] | None = None
    ) -> None:
        self.container_id = container_id
        self.url = url
        self.paths = paths or [""]
        """Where each copy of the model answers, under `url`."""
        self.ceiling_mib = ceiling_mib
        """The model's memory.ceiling_mib; the container's memory limit is that times
        the copies of the model it serves. For messages."""
        self.cgroup: CgroupMemory | None = None
        self.oom_killed = False
        """Whether the kernel has killed a process of the container for memory."""

    @property
    def model_urls(self) -> list[str]:
        return [self.url + path for path in self.paths]

    @property
    def memory_source(self) -> str:
        return self.cgroup.source if self.cgroup else "cgroup"

    def memory_bytes(self) -> int:
        if self.cgroup is None:
            raise ProcessLookupError("the container's cgroup is unknown")
        return self.cgroup()

    @property
    def private_source(self) -> str:
        return self.cgroup.private_source if self.cgroup else "cgroup anon"

    def private_bytes(self) -> int:
        if self.cgroup is None:
            raise ProcessLookupError("the container's cgroup is unknown")
        return self.cgroup.private()

    def exited(self) -> str | None:
        """Why the server is gone, or None while it runs.

        A process of the container killed at the memory limit counts as gone although the
        container may still run: BentoML starts a killed worker again, and the model has
        shown that it does not fit under its ceiling.
        """
        if self.cgroup is not None and not self.oom_killed:
            self.oom_killed = oom_kills(self.cgroup) > 0
        fmt = "{{.State.Running}} {{.State.ExitCode}} {{.State.OOMKilled}}"
        out = _docker("inspect", "-f", fmt, self.container_id, timeout=30)
        if out.returncode == 0:
            running, code, oom = [*out.stdout.split(), "", "", ""][:3]
            if oom == "true" or self.oom_killed:
                code_or_none = None if running == "true" else code
                return out_of_memory(self.ceiling_mib, code_or_none, len(self.paths))
            return None if running == "true" else f"the container exited with code {code}"
        if self.oom_killed:
            return out_of_memory(self.ceiling_mib, None, len(self.paths))
        if out.returncode == 124:
            return None  # a busy engine says nothing; the readiness timeout still applies
        return "the container is gone"

    def log_tail(self, lines: int) -> list[str]:
        out = _docker("logs", "--tail", str(lines), self.container_id, timeout=60)
        text = out.stdout + out.stderr  # the container's stdout and stderr
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def stop(self) -> None:
        # Kill first, so the server is gone at once; removing a container can take minutes
        # on the vfs storage driver (it deletes a full copy of the image).
        _docker("kill", self.container_id, timeout=60)
        _docker("rm", "--force", self.container_id, timeout=900)


def sandbox_args(host_port: int, memory_mib: int) -> list[str]:
    """The `docker create` options that fence the model's container in (module docstring).

    One port published on 127.0.0.1 only; memory limited to `memory_mib` with no swap on
    top (`--memory-swap` is memory plus swap); a tmpfs /tmp without exec, setuid or device
    files, as the only writable place besides the engine's own /dev/shm.
    """
    memory = f"{memory_mib}m"
    return [
        f"--network={NETWORK}",
        f"--publish=127.0.0.1:{host_port}:{CONTAINER_PORT}/tcp",
        f"--memory={memory}",
        f"--memory-swap={memory}",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--read-only",
        f"--tmpfs=/tmp:rw,nosuid,nodev,noexec,size={TMP_MIB}m",
        f"--pids-limit={PIDS_LIMIT}",
        f"--user={UID}:{UID}",
    ]


def bridge_command(cmd: list[str], port: int) -> list[str]:
    """`cmd` with its `--host`/`--port` values set to 0.0.0.0 and `port`: on the bridge
    network the published port reaches the container's own interface, not its loopback.

    Empty (keep the image's command) when it has neither option.
    """
    values = {"--host": "0.0.0.0", "--port": str(port)}
    out: list[str] = []
    changed = False
    skip = False
    for i, arg in enumerate(cmd):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in values:
            changed = True
            out.append(f"{name}={values[name]}")
            skip = "=" not in arg and i + 1 < len(cmd)
        else:
            out.append(arg)
    return out if changed else []


def oom_kills(cgroup: CgroupMemory) -> int:
    """Processes the kernel has killed in `cgroup` for want of memory (0 when unknown).

    v1: `oom_kill` of memory.oom_control (kernel 4.13 and later); v2: `oom_kill` of
    memory.events.
    """
    name = "memory.oom_control" if cgroup.version == 1 else "memory.events"
    try:
        return parse_memory_stat((cgroup.path / name).read_text()).get("oom_kill", 0)
    except OSError:
        return 0  # the cgroup is gone with the container; docker inspect tells the rest


def out_of_memory(ceiling_mib: int, exit_code: str | None, copies: int = 1) -> str:
    """The gate's words for a container whose memory reached its limit, the model's ceiling
    (times the `copies` of the model a pack container serves).

    `exit_code` is None while the container still runs (a worker was killed).
    """
    times = f"{copies} times " if copies > 1 else ""
    limit = f"its limit, {times}the model's ceiling of {ceiling_mib} MiB (memory.ceiling_mib)"
    if exit_code is None:
        return f"out of memory: a process of the container was OOM-killed at {limit}"
    return f"out of memory: the container exited with code {exit_code} after an OOM kill at {limit}"


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`docker ARGS...` through the host layer's CLI, output as text."""
    out = docker_cli.run(*args, timeout=timeout)
    return subprocess.CompletedProcess(
        out.args,
        out.returncode,
        out.stdout.decode(errors="replace"),
        out.stderr.decode(errors="replace"),
    )
