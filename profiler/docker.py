"""The docker backend: the model image as a container, memory from its cgroup.

The container shares the host's network namespace (`--network host`), so the profiler's
traffic never leaves the loopback interface. Its server is moved to 127.0.0.1 on a free
port: `--host`/`--port` values in the image's command are rewritten (the command is
otherwise kept as the image has it), and `BENTOML_HOST`/`BENTOML_PORT`/`PORT` are set for
images that take them from the environment. Memory is read from the container's memory
cgroup (v1 or v2, `profiler.memory.find_cgroup`). No memory limit is set: the profile
measures what the model takes, the limit comes from the measurement. An image the engine
does not have is pulled first, logged in with the backend's registry credentials if any
(`fleet.host.docker_cli.pull`: a private client config, nothing left behind).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from fleet.errors import BuildError
from fleet.host import docker_cli
from fleet.host.images import BuildSettings, build_image
from fleet.host.processes import free_port
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from profiler.gate import ProfileGateError
from profiler.memory import CgroupMemory, find_cgroup

ImageFor = Callable[[ResolvedModel, Registry | None], str]
"""(resolved, registry) -> image reference to run."""

LABEL = "model-fleet.profiler=1"


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
    """Runs the model image as a container on the host network."""

    name = "docker"

    def __init__(
        self, image: str | ImageFor | None = None, login: docker_cli.RegistryLogin | None = None
    ) -> None:
        self.image_for: ImageFor = (
            _fixed_image(image) if isinstance(image, str) else image or built_image()
        )
        self.login = login
        """Credentials for pulling the image when the engine does not have it."""

    def start(self, resolved: ResolvedModel, registry: Registry | None) -> ContainerServer:
        image = self.image_for(resolved, registry)
        port = free_port()
        env = {"BENTOML_HOST": "127.0.0.1", "BENTOML_PORT": str(port), "PORT": str(port)}
        create = ["create", "--network", "host", "--label", LABEL]
        create += [f"--env={k}={v}" for k, v in env.items()]
        command = loopback_command(self._image_command(resolved, image), port)
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
        server = ContainerServer(cid, f"http://127.0.0.1:{port}")
        try:
            pid = _docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
            server.cgroup = find_cgroup(cid, int(pid) if pid.isdigit() else None)
        except BaseException:
            server.stop()
            raise
        return server

    def _image_command(self, resolved: ResolvedModel, image: str) -> list[str]:
        """The image's command; the image is pulled first when the engine lacks it (a fresh
        runner profiling an image built and pushed elsewhere)."""
        if docker_cli.inspect(image) is None:
            try:
                docker_cli.pull(image, self.login)
            except BuildError as exc:
                problem = " ".join(str(exc).split())[:600]
                raise ProfileGateError(
                    resolved.name,
                    [f"no image {image} in the engine, and pulling it failed: {problem}"],
                ) from exc
        found = _docker("image", "inspect", "-f", "{{json .Config.Cmd}}", image)
        if found.returncode != 0:
            raise ProfileGateError(resolved.name, [f"no image {image}: {found.stderr.strip()}"])
        cmd: list[str] = json.loads(found.stdout or "null") or []
        return cmd


class ContainerServer:
    """A model server container started by DockerBackend."""

    def __init__(self, container_id: str, url: str) -> None:
        self.container_id = container_id
        self.url = url
        self.cgroup: CgroupMemory | None = None

    @property
    def memory_source(self) -> str:
        return self.cgroup.source if self.cgroup else "cgroup"

    def memory_bytes(self) -> int:
        if self.cgroup is None:
            raise ProcessLookupError("the container's cgroup is unknown")
        return self.cgroup()

    def exited(self) -> str | None:
        fmt = "{{.State.Running}} {{.State.ExitCode}} {{.State.OOMKilled}}"
        out = _docker("inspect", "-f", fmt, self.container_id, timeout=30)
        if out.returncode == 124:
            return None  # a busy engine says nothing; the readiness timeout still applies
        if out.returncode != 0:
            return "the container is gone"
        running, code, oom = [*out.stdout.split(), "", "", ""][:3]
        if running == "true":
            return None
        return f"the container exited with code {code}" + (" (OOM killed)" if oom == "true" else "")

    def log_tail(self, lines: int) -> list[str]:
        out = _docker("logs", "--tail", str(lines), self.container_id, timeout=60)
        text = out.stdout + out.stderr  # the container's stdout and stderr
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def stop(self) -> None:
        # Kill first, so the server is gone at once; removing a container can take minutes
        # on the vfs storage driver (it deletes a full copy of the image).
        _docker("kill", self.container_id, timeout=60)
        _docker("rm", "--force", self.container_id, timeout=900)


def loopback_command(cmd: list[str], port: int) -> list[str]:
    """`cmd` with its `--host`/`--port` values set to 127.0.0.1 and `port`.

    Empty (keep the image's command) when it has neither option.
    """
    values = {"--host": "127.0.0.1", "--port": str(port)}
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


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`docker ARGS...` through the host layer's CLI, output as text."""
    out = docker_cli.run(*args, timeout=timeout)
    return subprocess.CompletedProcess(
        out.args,
        out.returncode,
        out.stdout.decode(errors="replace"),
        out.stderr.decode(errors="replace"),
    )
