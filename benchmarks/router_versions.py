"""The router's CPU per request now and at an earlier commit, side by side in one run.

    uv run python -m benchmarks.router_versions --before REV [--rounds 5] [--seconds 3]

Three routers in front of the echo stand-in (one route, one record per request, c=1,
the lean load loop of benchmarks/router.py): the router of commit REV (checked out into
a temporary git worktree, run with this environment's packages), this tree's router as
`python -m fleet.router` runs it (its bounded HTTP protocol), and this tree's app under
uvicorn's own protocol. Measured interleaved, the order reversed every round; the
medians of the router process's CPU per request are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.router import ECHO_APP, ROOT, Load, cpu_s, plain_router_argv, start, supervisor
from fleet.host.processes import Supervisor, free_port

BEFORE = "before"
NOW = "now (bounded protocol)"
PLAIN = "now, uvicorn's protocol"
RECORD = [{"x": 1.5}]


def start_router(children: Supervisor, echo: str, kind: str, old_tree: Path) -> tuple[str, int]:
    columns = [{"name": "x", "type": "double", "required": True}]
    route = {"path": "/ok", "model": "ok", "version": 1, "backend": f"{echo}/ok"}
    config = {"version": 1, "routes": [{**route, "inputs": columns}]}
    tmp = Path(tempfile.mkdtemp(prefix="router-", dir=children.log_dir))
    (tmp / "routes.json").write_text(json.dumps(config))
    port = free_port()
    args = ["--config", str(tmp / "routes.json"), "--port", str(port), "--log-level", "error"]
    if kind == BEFORE:
        code = (
            f"import runpy, sys; sys.path.insert(0, {str(old_tree)!r}); "
            "runpy.run_module('fleet.router', run_name='__main__', alter_sys=True)"
        )
        argv = [sys.executable, "-c", code, *args]
    elif kind == NOW:
        argv = [sys.executable, "-m", "fleet.router", *args]
    else:
        argv = plain_router_argv(tmp / "routes.json", port)
    url = f"http://127.0.0.1:{port}"
    return url + "/ok", start(children, kind, argv, url, timeout_s=60).pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with ExitStack() as stack:
        children = supervisor(stack)
        old_tree = Path(tempfile.mkdtemp(prefix="router-before-"))
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", "-f", str(old_tree), args.before], check=True)
        stack.callback(subprocess.run, [*git, "remove", "--force", str(old_tree)], check=False)
        port = free_port()
        echo = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "uvicorn", ECHO_APP, "--port", str(port)]
        start(children, "echo", [*argv, "--log-level", "warning", "--no-access-log"], echo)
        targets = {k: start_router(children, echo, k, old_tree) for k in (BEFORE, NOW, PLAIN)}
        cpu: dict[str, list[float]] = {k: [] for k in targets}
        for url, _ in targets.values():
            Load(url, RECORD).run(1, 1.0)  # warm up
        for i in range(args.rounds):
            order = list(targets.items())
            for name, (url, pid) in order if i % 2 == 0 else order[::-1]:
                before = cpu_s(pid)
                result = Load(url, RECORD).run(1, args.seconds)
                cpu[name].append((cpu_s(pid) - before) * 1000 / (result.rps * args.seconds))
    print(f"| router | CPU per request at c=1 (median of {args.rounds}) | rounds |")
    print("|---|---|---|")
    for name, values in cpu.items():
        label = f"{BEFORE} ({args.before})" if name == BEFORE else name
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {label} | {statistics.median(values):.3f} ms | {rounds} |")


if __name__ == "__main__":
    main()
