"""Memory probes and the sampler, on real processes and on cgroup folders laid out by hand."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler.memory import (
    MIB,
    CgroupMemory,
    MemorySampler,
    cgroup_v1_bytes,
    cgroup_v2_bytes,
    find_cgroup,
    parse_memory_stat,
    percentile,
    process_tree_pss,
    process_tree_uss,
)

# A parent that forks a child holding `mib` MiB of written (so resident) memory.
TREE = """
import subprocess, sys, time
child = "b = b'x' * ({mib} * 2**20); print('ready', flush=True); import time; time.sleep(60)"
proc = subprocess.Popen([sys.executable, "-c", child], stdout=sys.stdout)
proc.wait()
"""


def start_tree(mib: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", TREE.format(mib=mib)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop_tree(proc: subprocess.Popen[str]) -> None:
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def test_pss_of_a_process_tree_counts_the_children():
    small, big = start_tree(1), start_tree(150)
    try:
        small_mib = process_tree_pss(small.pid) / MIB
        big_mib = process_tree_pss(big.pid) / MIB
    finally:
        stop_tree(small)
        stop_tree(big)
    # the 150 MiB live in the grandchild: only a sum over the tree sees them
    assert big_mib - small_mib >= 140
    assert big_mib - small_mib <= 170
    assert small_mib > 5  # two Python interpreters


def test_pss_of_a_gone_process_raises():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        process_tree_pss(proc.pid)
    with pytest.raises(ProcessLookupError):
        process_tree_uss(proc.pid)


def test_uss_of_a_process_tree_counts_the_private_pages_of_the_children():
    small, big = start_tree(1), start_tree(150)
    try:
        small_mib = process_tree_uss(small.pid) / MIB
        big_mib = process_tree_uss(big.pid) / MIB
        assert process_tree_uss(big.pid) <= process_tree_pss(big.pid)
    finally:
        stop_tree(small)
        stop_tree(big)
    assert 140 <= big_mib - small_mib <= 170


V1_STAT = """cache 1048576
rss 104857600
mapped_file 20971520
total_cache 8388608
total_rss 209715200
total_mapped_file 31457280
total_inactive_file 4194304
"""


def test_cgroup_formulas():
    stat = parse_memory_stat(V1_STAT)
    assert stat["total_rss"] == 200 * MIB
    assert cgroup_v1_bytes(250 * MIB, stat) == 230 * MIB  # total_rss + total_mapped_file
    flat = {"rss": 100 * MIB, "mapped_file": 20 * MIB}
    assert cgroup_v1_bytes(300 * MIB, flat) == 120 * MIB
    assert cgroup_v1_bytes(300 * MIB, {"cache": 50 * MIB}) == 250 * MIB  # usage - cache
    assert cgroup_v2_bytes(300 * MIB, {"inactive_file": 40 * MIB, "anon": 1}) == 260 * MIB


def write(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_cgroup_probe_reads_v1_and_v2_folders(tmp_path):
    cid = "c0ffee" * 10
    v1 = write(
        tmp_path / "v1" / "memory" / "docker" / cid,
        {"memory.usage_in_bytes": str(250 * MIB), "memory.stat": V1_STAT},
    )
    found = find_cgroup(cid, None, root=tmp_path / "v1")
    assert found == CgroupMemory(v1, 1)
    assert found() == 230 * MIB and found.source == "cgroup v1 rss+mapped_file"
    assert found.private() == 200 * MIB and found.private_source == "cgroup v1 rss"
    v2 = write(
        tmp_path / "v2" / "system.slice" / f"docker-{cid}.scope",
        {
            "memory.current": str(300 * MIB),
            "memory.stat": f"anon {180 * MIB}\ninactive_file {40 * MIB}\n",
        },
    )
    found = find_cgroup(cid, None, root=tmp_path / "v2")
    assert found == CgroupMemory(v2, 2) and found() == 260 * MIB
    assert found.private() == 180 * MIB and found.private_source == "cgroup v2 anon"
    with pytest.raises(LookupError, match="no memory cgroup found for container c0ffeec0ffee"):
        find_cgroup(cid, None, root=tmp_path / "nothing")
    (v1 / "memory.stat").unlink()
    with pytest.raises(ProcessLookupError):
        CgroupMemory(v1, 1)()
    with pytest.raises(ProcessLookupError):
        CgroupMemory(v1, 1).private()


def test_cgroup_found_through_the_process(tmp_path):
    """The path in /proc/<pid>/cgroup wins; this test's own process is in some cgroup."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    rel = next((ln.split(":", 2)[2] for ln in lines if ":memory:" in ln), None)
    if rel is None:
        rel = lines[0].split(":", 2)[2]
        target = tmp_path / rel.lstrip("/")
        write(target, {"memory.current": "1", "memory.stat": ""})
        assert find_cgroup("x", 1, root=tmp_path) == CgroupMemory(target, 2)
        return
    target = tmp_path / "memory" / rel.lstrip("/")
    write(target, {"memory.usage_in_bytes": "1", "memory.stat": ""})
    import os

    assert find_cgroup("x", os.getpid(), root=tmp_path) == CgroupMemory(target, 1)


def test_sampler_samples_at_an_interval_until_stopped():
    calls = iter(range(10_000))
    with MemorySampler(lambda: next(calls), interval_s=0.01) as sampler:
        time.sleep(0.3)
    count = len(sampler.values)
    assert count >= 5
    assert sampler.values == list(range(count))
    assert sampler.times == sorted(sampler.times)
    time.sleep(0.05)
    assert len(sampler.values) == count  # stopped
    middle = sampler.times[2]
    assert sampler.window(middle, sampler.times[-1]) == sampler.values[2:]


def test_sampler_stops_when_the_probe_fails():
    values = [10, 20]

    def probe() -> int:
        if not values:
            raise ProcessLookupError("gone")
        return values.pop(0)

    with MemorySampler(probe, interval_s=0.01) as sampler:
        time.sleep(0.2)
    assert sampler.values == [10, 20]
    assert isinstance(sampler.error, ProcessLookupError)
    with pytest.raises(ValueError):
        MemorySampler(probe, interval_s=0)


def test_percentile():
    assert percentile([5.0], 95) == 5.0
    assert percentile([float(v) for v in range(1, 101)], 50) == 50.5
    assert percentile([float(v) for v in range(101)], 95) == 95.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)
