"""The Docker CLI: one lookup, one way to call it, registry login that leaves nothing behind.

`docker()` is `$DOCKER` (as it was at process start), else /usr/bin/docker, else `docker`
on PATH. A push with credentials logs in into a private, temporary client config
(`docker --config DIR`), so the password is never left in `~/.docker/config.json` for
later jobs on a shared runner, and two pushes with different credentials on two threads
do not see each other's login.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fleet.errors import BuildError
from fleet.host.environment import HOST


def docker() -> str:
    """The Docker CLI to call."""
    if HOST.docker:
        return HOST.docker
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    return shutil.which("docker") or "docker"


@dataclass(frozen=True)
class RegistryLogin:
    """Credentials for one image registry."""

    server: str
    """Registry host (`registry.example.com:5000`)."""
    username: str
    password: str = field(repr=False)


def run(
    *args: str,
    stdin: IO[bytes] | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
    config: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """`docker [--config DIR] ARGS...`, output captured; never raises for the exit code.

    A call that runs past `timeout` comes back with exit code 124 and says so on stderr.
    """
    argv = [docker(), *(["--config", str(config)] if config else []), *args]
    try:
        return subprocess.run(
            argv, capture_output=True, stdin=stdin, input=input, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        message = f"timed out after {timeout:g} s".encode()
        return subprocess.CompletedProcess(argv, 124, b"", message)


def check(*args: str, stdin: IO[bytes] | None = None, config: Path | None = None) -> str:
    """`docker ARGS...`; its stdout, or BuildError with its output when it fails."""
    proc = run(*args, stdin=stdin, config=config)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode(errors="replace")[-2000:]
        raise BuildError(f"docker {' '.join(args[:3])} failed: {err}")
    return proc.stdout.decode()


def inspect(ref: str) -> dict[str, Any] | None:
    """`docker image inspect` of `ref`, or None when there is no such image."""
    proc = run("image", "inspect", ref)
    if proc.returncode != 0:
        return None
    found: list[dict[str, Any]] = json.loads(proc.stdout)
    return found[0] if found else None


def push(ref: str, login: RegistryLogin | None = None) -> str:
    """Push `ref` (logged in with `login` if given); returns its `name@sha256:...` digest."""
    if login is None:
        check("push", ref)
    else:
        config = Path(tempfile.mkdtemp(prefix="fleet-docker-config-"))
        try:
            proc = run(
                "login",
                login.server,
                "--username",
                login.username,
                "--password-stdin",
                input=login.password.encode(),
                config=config,
            )
            if proc.returncode != 0:
                err = proc.stderr.decode(errors="replace")[-1000:]
                raise BuildError(f"docker login {login.server} as {login.username} failed: {err}")
            check("push", ref, config=config)
        finally:
            shutil.rmtree(config, ignore_errors=True)
    info = inspect(ref) or {}
    name = ref.rsplit(":", 1)[0]
    digests = [d for d in info.get("RepoDigests", []) if d.startswith(name + "@")]
    if not digests:
        raise BuildError(f"docker push {ref}: the engine reports no repository digest")
    return str(digests[0])
