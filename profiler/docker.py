"""The docker backend: the model image as a container, memory from its cgroup.

The container shares the host's network namespace (`--network host`), so the profiler's
traffic never leaves the loopback interface. Its server is moved to 127.0.0.1 on a free
port: `--host`/`--port` values in the image's command are rewritten (the command is
otherwise kept as the image has it), and `BENTOML_HOST`/`BENTOML_PORT`/`PORT` are set for
images that take them from the environment. Memory is read from the container's memory
cgroup (v1 or v2, `profiler.memory.find_cgroup`). No memory limit is set: the profile
measures what the model takes, the limit comes from the measurement.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleet.registry import ResolvedModel
from profiler.backends import free_port
from profiler.gate import ProfileGateError
from profiler.memory import CgroupMemory, find_cgroup

if TYPE_CHECKING:
    from fleet.build import BuildSettings

ImageFor = Callable[[ResolvedModel, str], str]
"""(resolved, tracking URI) -> image reference to run."""

LABEL = "model-fleet.profiler=1"


def docker_cli() -> str:
    """The docker CLI: $DOCKER, else /usr/bin/docker, else `docker` on PATH."""
    found = os.environ.get("DOCKER") or (
        "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
    )
    if not found:
        raise RuntimeError("no docker CLI found (set DOCKER or install docker)")
    return found


def built_image(settings: BuildSettings | None = None) -> ImageFor:
    """Build (or reuse, by content hash) the model image with fleet.build."""

    def image_for(resolved: ResolvedModel, tracking_uri: str) -> str:
        from fleet.build import BuildSettings, build_image

        return build_image(resolved, tracking_uri, settings or BuildSettings()).image_ref

    return image_for


def _fixed_image(ref: str) -> ImageFor:
    def image_for(resolved: ResolvedModel, tracking_uri: str) -> str:
        return ref

    return image_for


class DockerBackend:
    """Runs the model image as a container on the host network."""

    name = "docker"

    def __init__(self, image: str | ImageFor | None = None, *, docker: str | None = None) -> None:
        self.image_for: ImageFor = (
            _fixed_image(image) if isinstance(image, str) else image or built_image()
        )
        self.docker = docker or docker_cli()

    def start(self, resolved: ResolvedModel, tracking_uri: str) -> ContainerServer:
        image = self.image_for(resolved, tracking_uri)
        port = free_port()
        env = {"BENTOML_HOST": "127.0.0.1", "BENTOML_PORT": str(port), "PORT": str(port)}
        create = [self.docker, "create", "--network", "host", "--label", LABEL]
        create += [f"--env={k}={v}" for k, v in env.items()]
        inspect = [self.docker, "image", "inspect", "-f", "{{json .Config.Cmd}}", image]
        found = _docker(inspect, check=False)
        if found.returncode != 0:
            raise ProfileGateError(resolved.name, [f"no image {image}: {found.stderr.strip()}"])
        command = loopback_command(json.loads(found.stdout or "null") or [], port)
        made = _docker([*create, image, *command], check=False)
        if made.returncode != 0:
            raise ProfileGateError(
                resolved.name, [f"no container could be made from {image}: {made.stderr.strip()}"]
            )
        cid = made.stdout.strip()
        started = _docker([self.docker, "start", cid], check=False)
        if started.returncode != 0:
            _docker([self.docker, "rm", "--force", cid], check=False)
            raise ProfileGateError(
                resolved.name,
                [f"the container of {image} could not be started: {started.stderr.strip()}"],
            )
        server = ContainerServer(self.docker, cid, f"http://127.0.0.1:{port}")
        try:
            pid = _docker([self.docker, "inspect", "-f", "{{.State.Pid}}", cid]).stdout.strip()
            server.cgroup = find_cgroup(cid, int(pid) if pid.isdigit() else None)
        except BaseException:
            server.stop()
            raise
        return server


class ContainerServer:
    """A model server container started by DockerBackend."""

    def __init__(self, docker: str, container_id: str, base_url: str) -> None:
        self.docker = docker
        self.container_id = container_id
        self.base_url = base_url
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
        out = _docker(
            [self.docker, "inspect", "-f", fmt, self.container_id], check=False, timeout=30
        )
        if out.returncode == 124:
            return None  # a busy engine says nothing; the readiness timeout still applies
        if out.returncode != 0:
            return "the container is gone"
        running, code, oom = [*out.stdout.split(), "", "", ""][:3]
        if running == "true":
            return None
        return f"the container exited with code {code}" + (" (OOM killed)" if oom == "true" else "")

    def log_tail(self, lines: int) -> list[str]:
        out = _docker(
            [self.docker, "logs", "--tail", str(lines), self.container_id],
            check=False,
            merge=True,
            timeout=60,
        )
        return [line for line in out.stdout.splitlines() if line.strip()][-lines:]

    def stop(self) -> None:
        # Kill first, so the server is gone at once; removing a container can take minutes
        # on the vfs storage driver (it deletes a full copy of the image).
        _docker([self.docker, "kill", self.container_id], check=False, timeout=60)
        _docker([self.docker, "rm", "--force", self.container_id], check=False, timeout=900)


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


def _docker(
    argv: list[str], *, check: bool = True, merge: bool = False, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(
            argv,
            capture_output=not merge,
            stdout=subprocess.PIPE if merge else None,
            stderr=subprocess.STDOUT if merge else None,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        out = subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:g} s")
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {(out.stderr or '').strip()}")
    return out
