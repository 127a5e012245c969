"""The Docker CLI: one lookup, one way to call it, registry login that leaves nothing behind.

`docker()` is `$DOCKER` (as it was at process start), else /usr/bin/docker, else `docker`
on PATH. A push with credentials logs in into a private, temporary client config
(`docker --config DIR`), so the password is never left in `~/.docker/config.json` for
later jobs on a shared runner, and two pushes with different credentials on two threads
do not see each other's login. A pull with credentials (the profile step on a fresh
runner) logs in the same way.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def logged_in(login: RegistryLogin | None) -> Iterator[Path | None]:
    """A private client config logged in with `login` while the block runs, then removed.

    None without a login: the call uses the user's own client config (a runner that ran
    `docker login` itself, or a credential helper).
    """
    if login is None:
        yield None
        return
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
            err = proc.stderr.decode(errors="replace").strip()[-1000:]
            raise BuildError(f"docker login {login.server} as {login.username} failed: {err}")
        yield config
    finally:
        shutil.rmtree(config, ignore_errors=True)


def push(ref: str, login: RegistryLogin | None = None, image_id: str | None = None) -> str:
    """Push `ref` (logged in with `login` if given); returns its `name@sha256:...` digest.

    A tag the registry already holds is never pushed over: its digest is returned as the
    registry has it. Tags are content hashes, so the registry's image was built from the
    same inputs (by another runner or stack); staging and production deploy one digest.
    With `image_id`, the engine's `ref` must be that image (the one just built), checked
    before and after the push: BuildError otherwise (another job re-tagged it).
    """
    with logged_in(login) as config:
        found = _remote_digest(ref, config)
        if found is not None:
            return found
        _is_image(ref, image_id)
        check("push", ref, config=config)
    info = inspect(ref) or {}
    _is_image(ref, image_id, info)
    name = ref.rsplit(":", 1)[0]
    digests = [d for d in info.get("RepoDigests", []) if d.startswith(name + "@")]
    if not digests:
        raise BuildError(f"docker push {ref}: the engine reports no repository digest")
    return str(digests[0])


def _is_image(ref: str, image_id: str | None, info: dict[str, Any] | None = None) -> None:
    if image_id is None:
        return
    held = (info if info is not None else inspect(ref) or {}).get("Id")
    if held != image_id:
        raise BuildError(
            f"docker push {ref}: the engine's image under this tag is {str(held)[:19]}, not "
            f"{image_id[:19]} as built: another job using this engine re-tagged it; nothing "
            "was deployed from it"
        )


def remote_digest(ref: str, login: RegistryLogin | None = None) -> str | None:
    """`name@sha256:...` of the tag `ref` in its registry, or None when it holds no such tag.

    Reads the registry only (`docker manifest inspect`); BuildError when the registry
    cannot be read (down, or the login is refused).
    """
    with logged_in(login) as config:
        return _remote_digest(ref, config)


def _remote_digest(ref: str, config: Path | None) -> str | None:
    host = ref.split("/", 1)[0]
    # The engine talks plain HTTP to a registry on loopback; the CLI must be told.
    loopback = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]")
    args = ["manifest", "inspect", "--verbose", *(["--insecure"] if loopback else []), ref]
    proc = run(*args, config=config, timeout=120)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        if "no such manifest" in err or "manifest unknown" in err.lower():
            return None
        raise BuildError(f"cannot read {ref} from its registry: {err[-1000:]}")
    found = json.loads(proc.stdout)
    descriptor = (found[0] if isinstance(found, list) else found)["Descriptor"]
    return f"{ref.rsplit(':', 1)[0]}@{descriptor['digest']}"


def pull(ref: str, login: RegistryLogin | None = None) -> dict[str, Any]:
    """Pull `ref` (`name:tag` or `name@sha256:...`), logged in with `login` if given, into
    the engine; its `docker image inspect`. BuildError naming the ref when it fails."""
    with logged_in(login) as config:
        check("pull", "--quiet", ref, config=config)
    info = inspect(ref)
    if info is None:
        raise BuildError(f"docker pull {ref}: pulled, but the engine has no such image")
    return info
