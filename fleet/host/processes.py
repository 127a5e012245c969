"""Child processes: start, wait until they answer, stop, never orphan; free ports.

The one supervisor of the host layer (`fleet serve`, the profiler's process backend and
the tests use it). Every child runs in its own session (process group), so stopping it
stops the workers it forked too. Processes that left the group are found before it is
signalled: by walking the process tree, by the processes it was seen with before
(`Child.remember`: BentoML starts each worker in a session of its own, so once the
server process is killed nothing else links them to it), and by its session. On Linux
each child also gets PR_SET_PDEATHSIG, so that even a parent killed with SIGKILL takes
its children with it, and a long-running parent (`fleet serve`) can `adopt_orphans`:
whatever its children leave behind becomes its own child, so `stop_descendants` finds it
whatever was killed before.

`wait_ready` is the one readiness wait: it polls a path on any number of targets (a
child, a container, any URL) until each answers 200, exits, or the time is up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
import psutil

from fleet.host.environment import child_env

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def adopt_orphans() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux; else False).

    A worker whose parent died is then re-parented to this process instead of to init,
    so it stays among this process's descendants (`stop_descendants`). Call `reap`
    now and then: adopted processes that exit are this process's zombies.
    """
    if _LIBC is None:
        return False
    return bool(_LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0)


def reap(keep: Sequence[Child] = ()) -> None:
    """Collect adopted children that exited (not `keep`'s: their Popen waits for them)."""
    ours = {child.pid for child in keep}
    with contextlib.suppress(psutil.Error):
        for process in psutil.Process().children():
            if process.pid not in ours and process.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(process.pid, os.WNOHANG)


def stop_descendants(grace_s: float = 5.0) -> None:
    """SIGTERM every process below this one, SIGKILL what is left after `grace_s`."""
    left = psutil.Process().children(recursive=True)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.terminate()
            process.resume()  # a stopped process handles SIGTERM only once continued
    _gone, alive = psutil.wait_procs(left, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    reap()


class Watched(Protocol):
    """Something `wait_ready` can poll: a base URL and whether it has exited."""

    @property
    def url(self) -> str: ...
    def exited(self) -> str | None: ...


@dataclass(frozen=True)
class Endpoint:
    """A bare URL to wait for, with an optional liveness check (`lambda: proc.poll() is None`)."""

    url: str
    alive: Callable[[], bool] | None = None

    def exited(self) -> str | None:
        return None if self.alive is None or self.alive() else "it exited"


W = TypeVar("W", bound=Watched)


def wait_ready(
    targets: Sequence[W],
    timeout_s: float,
    *,
    path: str = "/readyz",
    on_ready: Callable[[W], None] = lambda _: None,
    poll_s: float = 0.25,
) -> list[tuple[W, str]]:
    """Poll `GET <url><path>` on every target until it answers 200, exits, or time is up.

    Returns the targets that did not get ready, each with why, in the words of a sentence
    that follows "never ready: ". Empty when all are ready.
    """
    pending = list(targets)
    failed: list[tuple[W, str]] = []
    last = {id(t): "no answer yet" for t in pending}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=min(5.0, max(timeout_s, 0.1))) as client:
        while pending:
            for target in list(pending):
                gone = target.exited()
                if gone is not None:
                    failed.append((target, f"{gone} before GET {path} answered 200"))
                    pending.remove(target)
                    continue
                try:
                    response = client.get(target.url + path)
                    if response.status_code == 200:
                        pending.remove(target)
                        on_ready(target)
                        continue
                    last[id(target)] = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last[id(target)] = type(exc).__name__
            if not pending:
                break
            if time.monotonic() >= deadline:
                failed += [
                    (
                        t,
                        f"GET {t.url}{path} did not answer 200 within {timeout_s:g} s "
                        f"(last: {last[id(t)]})",
                    )
                    for t in pending
                ]
                break
            time.sleep(poll_s)
    return failed


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


@dataclass
class Child:
    """One started process (a model server, the router, a stand-in) and its log."""

    name: str
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    ready: bool = False
    error: str = ""
    argv: list[str] = field(default_factory=list)
    """What started it (so that `Supervisor.restart` can start it again)."""
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    starts: int = 1
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    """Processes found below it so far (`remember`): still found once their parent died."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exited(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"the process exited with code {code}"

    def remember(self) -> None:
        """Note the processes below it now. BentoML starts its workers in sessions of
        their own: when the server process is killed, only this finds them."""
        with contextlib.suppress(psutil.Error):
            for process in psutil.Process(self.pid).children(recursive=True):
                self.seen.setdefault(process.pid, process)

    def log_lines(self, lines: int = 20) -> list[str]:
        return tail_lines(self.log_path, lines)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_lines(lines))

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM its process group, SIGKILL what is left after `grace_s`."""
        _stop([self], grace_s)


@dataclass
class Supervisor:
    """Starts children with their logs in `log_dir`, and stops every one of them."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        url: str,
        cwd: Path | None = None,
    ) -> Child:
        """Start `argv` in `cwd` with `child_env(env)`; its output goes to `<name>.log`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        proc = _popen(argv, env, cwd, log_path, "wb")
        child = Child(name, url, log_path, proc, argv=argv, env=env, cwd=cwd)
        self.children.append(child)
        return child

    def restart(self, child: Child, grace_s: float = 3.0) -> None:
        """Stop what is left of `child` and start it again, the same way (same port);
        its log goes on in the same file. Call it from the thread that started it:
        PR_SET_PDEATHSIG follows the thread that forked."""
        _stop([child], grace_s)
        child.seen.clear()
        child.starts += 1
        with child.log_path.open("ab") as log:
            log.write(f"\n--- fleet: start {child.starts} ---\n".encode())
        child.proc = _popen(child.argv, child.env, child.cwd, child.log_path, "ab")
        child.ready, child.error = False, ""

    def wait_ready(
        self,
        children: Sequence[Child],
        path: str,
        timeout_s: float,
        on_ready: Callable[[Child], None] = lambda _: None,
    ) -> None:
        """`wait_ready` over `children`, recording `ready` or `error` on each."""

        def ready(child: Child) -> None:
            child.ready = True
            on_ready(child)

        for child, why in wait_ready(children, timeout_s, path=path, on_ready=ready):
            child.error = why

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every child: SIGTERM every process group, SIGKILL what is left after `grace_s`."""
        _stop(self.children, grace_s)
        self.children.clear()


def _popen(
    argv: list[str], env: dict[str, str], cwd: Path | None, log_path: Path, mode: str
) -> subprocess.Popen[bytes]:
    with log_path.open(mode) as log:
        return subprocess.Popen(
            argv,
            env=child_env(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _members(child: Child) -> list[psutil.Process]:
    """The processes of `child`: its tree now, those it was seen with (`remember`), and
    whatever is still in its session (workers in process groups of their own)."""
    pid = child.pid
    found = {p.pid: p for p in child.seen.values() if p.is_running()}
    with contextlib.suppress(psutil.Error):
        found.update({p.pid: p for p in psutil.Process(pid).children(recursive=True)})
    for process in psutil.process_iter():
        with contextlib.suppress(OSError):
            # A session id is not reused while a member lives, so this is the child's.
            if process.pid != pid and os.getsid(process.pid) == pid:
                found.setdefault(process.pid, process)
    return list(found.values())


def _stop(children: Sequence[Child], grace_s: float) -> None:
    # Workers that left the group would outlive it: list them all first.
    trees = {child.pid: _members(child) for child in children}
    for child in children:
        _signal_group(child.pid, signal.SIGTERM)
        _signal_group(child.pid, signal.SIGCONT)  # a stopped group handles SIGTERM only now
        for process in trees[child.pid]:
            with contextlib.suppress(psutil.Error):
                process.terminate()
                process.resume()
    deadline = time.monotonic() + grace_s
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for child in children:
        # The group outlives its leader when workers linger, so signal it even after exit.
        _signal_group(child.pid, signal.SIGKILL)
        for process in trees[child.pid]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        child.proc.wait()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
