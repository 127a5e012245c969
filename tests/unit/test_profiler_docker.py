"""Pure parts of the docker backend: the image's server on the bridge network, the
sandbox's options, and what the gate says when the container runs out of memory."""

from __future__ import annotations

from pathlib import Path

from fleet.host.images import UID
from profiler.docker import bridge_command, oom_kills, out_of_memory, sandbox_args
from profiler.memory import CgroupMemory

CMD = ["/usr/bin/python3", "-OO", "-m", "fleet.serving"]


def test_host_and_port_of_the_image_command_are_rewritten():
    cmd = [*CMD, "--host", "127.0.0.1", "--port", "8080", "--log-dir", "/x"]
    assert bridge_command(cmd, 3000) == [*CMD, "--host=0.0.0.0", "--port=3000", "--log-dir", "/x"]


def test_equals_form_and_port_only():
    assert bridge_command([*CMD, "--port=8080"], 3000) == [*CMD, "--port=3000"]


def test_a_command_without_host_or_port_is_kept():
    # empty means: run the image's own command, which reads PORT (or BENTOML_PORT)
    assert bridge_command(CMD, 3000) == []
    assert bridge_command([], 3000) == []


def test_the_sandbox_options():
    args = sandbox_args(41234, 512)
    assert "--network=host" not in args and "--network=bridge" in args
    # the one published port, on the loopback only
    assert [a for a in args if a.startswith(("--publish", "-p"))] == [
        "--publish=127.0.0.1:41234:3000/tcp"
    ]
    # the ceiling, with no swap on top of it
    assert "--memory=512m" in args and "--memory-swap=512m" in args
    assert "--cap-drop=ALL" in args
    assert "--security-opt=no-new-privileges" in args
    assert "--read-only" in args
    tmpfs = [a for a in args if a.startswith("--tmpfs=")]
    assert len(tmpfs) == 1 and tmpfs[0].startswith("--tmpfs=/tmp:") and "size=" in tmpfs[0]
    assert "--pids-limit=256" in args
    assert f"--user={UID}:{UID}" in args and UID != 0
    assert not any(a.startswith(("--privileged", "--cap-add")) for a in args)


def test_oom_kills_are_read_from_the_cgroup(tmp_path: Path):
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert oom_kills(CgroupMemory(v1, 1)) == 2
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    assert oom_kills(CgroupMemory(v2, 2)) == 1
    # an older kernel without the counter, and a cgroup gone with its container
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert oom_kills(CgroupMemory(v1, 1)) == 0
    assert oom_kills(CgroupMemory(tmp_path / "gone", 2)) == 0


def test_out_of_memory_names_the_ceiling():
    died = out_of_memory(640, "137")
    assert "exited with code 137" in died and "ceiling of 640 MiB (memory.ceiling_mib)" in died
    worker = out_of_memory(640, None)
    assert "a process of the container was OOM-killed" in worker and "640 MiB" in worker
