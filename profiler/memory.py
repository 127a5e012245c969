"""Memory probes and a sampler that calls one at a fixed interval in a thread.

Two probes, one per backend, both in bytes:
- `process_tree_pss(pid)`: PSS (proportional set size) summed over a process and all its
  descendants. PSS splits shared pages between the processes sharing them, so the sum
  over a tree counts each page once: a BentoML server forks workers that share the
  interpreter and libraries, and RSS would count those several times.
- `CgroupMemory`: what the kernel charges a container's memory cgroup, minus the page
  cache it can reclaim. cgroup v1: `rss + mapped_file` from memory.stat (anonymous memory
  plus file pages mapped into the processes, the part that cannot be dropped), else
  `usage_in_bytes - cache`. cgroup v2: `memory.current - inactive_file`, the working set
  the kubelet watches.

And one private probe per backend, for the pack measurement's comparison of two servers
of the same model (`profiler.run`): memory that no other process or container shares, so
it does not move as processes elsewhere on the machine come and go (PSS does: the pages of
the libraries a server shares with them are split with them). `process_tree_uss(pid)`,
USS summed over the tree; `CgroupMemory.private()`, the cgroup's anonymous memory (v1
`rss`, v2 `anon`), which page cache charged to an earlier container cannot shift.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")


def process_tree_pss(pid: int) -> int:
    """PSS in bytes of process `pid` and its descendants; raises ProcessLookupError if gone."""
    return _tree_sum(pid, "pss")


def process_tree_uss(pid: int) -> int:
    """USS (pages no other process maps) in bytes of process `pid` and its descendants;
    raises ProcessLookupError if gone."""
    return _tree_sum(pid, "uss")


def _tree_sum(pid: int, field: str) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess as exc:
        raise ProcessLookupError(f"process {pid} is gone") from exc
    total = 0
    for proc in procs:
        try:
            total += int(getattr(proc.memory_full_info(), field))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # a worker that exits between listing and reading holds no memory
    return total


def parse_memory_stat(text: str) -> dict[str, int]:
    """memory.stat as a dict (`key value` lines)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def cgroup_v1_bytes(usage: int, stat: dict[str, int]) -> int:
    """Non-reclaimable memory of a v1 memory cgroup."""
    if "total_rss" in stat and "total_mapped_file" in stat:
        return stat["total_rss"] + stat["total_mapped_file"]
    if "rss" in stat and "mapped_file" in stat:
        return stat["rss"] + stat["mapped_file"]
    return max(0, usage - stat.get("total_cache", stat.get("cache", 0)))


def cgroup_v2_bytes(current: int, stat: dict[str, int]) -> int:
    """Working set of a v2 cgroup: memory.current minus inactive file pages."""
    return max(0, current - stat.get("inactive_file", 0))


@dataclass(frozen=True)
class CgroupMemory:
    """The memory probe of one cgroup folder (v1 memory controller or v2 unified)."""

    path: Path
    version: int

    def __call__(self) -> int:
        try:
            stat = parse_memory_stat((self.path / "memory.stat").read_text())
            if self.version == 1:
                usage = int((self.path / "memory.usage_in_bytes").read_text())
                return cgroup_v1_bytes(usage, stat)
            return cgroup_v2_bytes(int((self.path / "memory.current").read_text()), stat)
        except FileNotFoundError as exc:
            raise ProcessLookupError(f"cgroup {self.path} is gone") from exc

    def private(self) -> int:
        """Anonymous memory of the cgroup in bytes (v1 `total_rss`, v2 `anon`)."""
        try:
            stat = parse_memory_stat((self.path / "memory.stat").read_text())
        except FileNotFoundError as exc:
            raise ProcessLookupError(f"cgroup {self.path} is gone") from exc
        return cgroup_anon_bytes(self.version, stat)

    @property
    def source(self) -> str:
        formula = "rss+mapped_file" if self.version == 1 else "current-inactive_file"
        return f"cgroup v{self.version} {formula}"

    @property
    def private_source(self) -> str:
        return f"cgroup v{self.version} {'rss' if self.version == 1 else 'anon'}"


def cgroup_anon_bytes(version: int, stat: dict[str, int]) -> int:
    """Anonymous memory of a memory cgroup from its memory.stat."""
    if version == 1:
        return stat.get("total_rss", stat.get("rss", 0))
    return stat.get("anon", 0)


def find_cgroup(container_id: str, pid: int | None, root: Path = CGROUP_ROOT) -> CgroupMemory:
    """The memory cgroup of a container, from its main process or the usual driver paths.

    Raises LookupError listing the paths tried.
    """
    candidates: list[tuple[Path, int]] = []
    if pid:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            _, controllers, rel = line.split(":", 2)
            if "memory" in controllers.split(","):
                candidates.append((root / "memory" / rel.lstrip("/"), 1))
            elif controllers == "":
                candidates.append((root / rel.lstrip("/"), 2))
    for rel in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        candidates += [(root / "memory" / rel, 1), (root / rel, 2)]
    for path, version in candidates:
        marker = "memory.usage_in_bytes" if version == 1 else "memory.current"
        if (path / marker).is_file():
            return CgroupMemory(path, version)
    tried = ", ".join(str(p) for p, _ in candidates)
    raise LookupError(f"no memory cgroup found for container {container_id[:12]} (tried {tried})")


class MemorySampler:
    """Calls `probe` every `interval_s` seconds in a daemon thread and keeps the samples.

    Samples are (monotonic time, bytes). A probe that raises (the server died) ends
    sampling; the error is kept in `error`.
    """

    def __init__(self, probe: Callable[[], int], interval_s: float = 0.1) -> None:
        if interval_s <= 0:
            raise ValueError("the sampling interval must be positive")
        self.probe = probe
        self.interval_s = interval_s
        self.times: list[float] = []
        self.values: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        # Fixed-rate schedule: the next tick is computed from the start, so a slow probe
        # does not stretch the interval for the whole run.
        start = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            try:
                value = self.probe()
            except BaseException as exc:  # the server is gone: keep what we have
                self.error = exc
                return
            with self._lock:
                self.times.append(time.monotonic())
                self.values.append(value)
            tick += 1
            delay = start + tick * self.interval_s - time.monotonic()
            if delay < 0:
                tick = int((time.monotonic() - start) / self.interval_s) + 1
                delay = start + tick * self.interval_s - time.monotonic()
            self._stop.wait(max(0.0, delay))

    def window(self, start: float, end: float) -> list[int]:
        """Samples (bytes) taken between `start` and `end` (monotonic seconds)."""
        with self._lock:
            times, values = list(self.times), list(self.values)
        lo = bisect.bisect_left(times, start)
        hi = bisect.bisect_right(times, end)
        return values[lo:hi]


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0..100) with linear interpolation; raises on no values."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
