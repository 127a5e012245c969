"""The model server against the one before it and `mlflow models serve`, side by side.

    uv run python -m benchmarks.serving [--tracking-uri URI] [--model NAME]
        [--before REV] [--concurrency 1 16 64] [--seconds 5] [--rounds 3] [--out FILE]

One demo model (default the pyfunc LogisticRegression `match_probability_1_TAXI_trafficaware`),
one record per request, served by:
- this tree's model server (`python -OO -m fleet.serving`, one process), batching on;
- the model server of commit REV (default: the last commit before this server, the
  BentoML service on the pyfunc path), as `bentoml serve` ran it, checked out into a
  temporary git worktree and run with this environment's packages and that commit's
  environment for it;
- `mlflow models serve --env-manager local -w 1`;
- a no-op ASGI app under uvicorn: the load generator's own ceiling.
All run at once and take turns (the order rotated every round), for `rounds` rounds at
each concurrency, measured by the lean load loop of benchmarks/router.py (one keep-alive
connection per client). The table shows medians over rounds of requests/s, p50, p99 and
the server's CPU time per request (its whole process tree), the ratios to
`mlflow models serve` are medians of the per-round ones; then PSS of each server's
process tree, idle (after a warm-up) and after the load, with its process count, and the
tree's RSS: PSS splits the pages of libraries the servers share among them, so alone a
server holds between its PSS and its RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import process_tree, pss_mib
from benchmarks.router import ROOT, Load, cpu_s, start, supervisor
from fleet.host.model_server import server_command, server_config
from fleet.host.model_store import ModelStore
from fleet.host.processes import Supervisor, free_port
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from fleet.specfile import load_fleet

BEFORE = "8048a61"
"""The last commit whose model server was the BentoML service on the pyfunc path."""
NOW = "this server"
PREVIOUS = "previous server (BentoML, pyfunc)"
MLFLOW = "mlflow models serve"
NOOP = "no-op app (generator ceiling)"


async def noop_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers `[0.5]` at once: the load generator's own ceiling."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"[0.5]"})


@dataclass
class Target:
    """One server under test and what was measured of it."""

    load: Load
    pid: int
    runs: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    pss_idle: float = 0.0
    pss_after: float = 0.0
    rss_idle: float = 0.0
    processes: int = 0


def start_now(children: Supervisor, resolved: ResolvedModel, store: ModelStore) -> Target:
    port = free_port()
    argv, env = server_command(resolved, port, store)
    url = f"http://127.0.0.1:{port}"
    server = start(children, "now", argv, url, env=env)
    return Target(Load(f"{url}/predict", bodies(resolved)), server.pid)


def start_previous(
    children: Supervisor, resolved: ResolvedModel, store: ModelStore, tree: Path
) -> Target:
    """`bentoml serve` of the service in `tree`, with the environment that commit gave it."""
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-", dir=children.log_dir))
    (home / "models").symlink_to(store.home / "models", target_is_directory=True)
    env = {
        **server_config(resolved).to_env(),
        **store.env(),
        "BENTOML_HOME": str(home),
        "MLFLOW_ENABLE_LOGGED_MODEL_ENV_VALIDATION": "false",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "bentoml", "serve", "fleet.serving.service:ModelServer"]
    argv += ["--working-dir", str(tree), "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    server = start(children, "previous", argv, url, env=env)
    return Target(Load(f"{url}/predict", bodies(resolved)), server.pid)


def start_mlflow(children: Supervisor, resolved: ResolvedModel, registry: Registry) -> Target:
    port = free_port()
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    argv = [mlflow_cli, "models", "serve", "-m", resolved.model_uri, "--env-manager", "local"]
    argv += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    # mlflow runs `uvicorn` by name: the venv's bin must be on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    url = f"http://127.0.0.1:{port}"
    env = {**registry.env(), "PATH": path}
    server = start(children, "mlflow", argv, url, env=env, path="/ping")
    records = random_records(resolved.inputs, 500, seed=0)
    return Target(
        Load(f"{url}/invocations", [{"dataframe_records": [r]} for r in records]), server.pid
    )


def start_noop(children: Supervisor) -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "benchmarks.serving:noop_app", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    server = start(children, "noop", [*argv, "--log-level", "warning"], url, path="/")
    return Target(Load(f"{url}/", [{}]), server.pid)


def bodies(resolved: ResolvedModel) -> list[dict[str, Any]]:
    return [{"records": [r]} for r in random_records(resolved.inputs, 500, seed=0)]


def measure(targets: dict[str, Target], args: argparse.Namespace) -> None:
    for t in targets.values():
        t.load.run(16, 2.0)  # warm-up
    time.sleep(1)
    for t in targets.values():
        t.pss_idle = pss_mib(t.pid)
        tree = process_tree(t.pid)
        t.processes = len(tree)
        t.rss_idle = sum(p.memory_info().rss for p in tree) / 2**20
    names = list(targets)
    for c in args.concurrency:
        for i in range(args.rounds):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                t = targets[name]
                before = cpu_s(t.pid)
                res = t.load.run(c, args.seconds)
                n = max(1.0, res.rps * args.seconds)
                run = {
                    "rps": res.rps,
                    "p50_ms": res.p50_ms,
                    "p99_ms": res.p99_ms,
                    "errors": res.errors,
                    "cpu_ms": (cpu_s(t.pid) - before) * 1000 / n,
                }
                t.runs.setdefault(c, []).append(run)
                print(f"c={c:<3} {name:<36} " + json.dumps(run), file=sys.stderr, flush=True)
    for t in targets.values():
        t.pss_after = pss_mib(t.pid)


def table(targets: dict[str, Target], model: str, before: str) -> str:
    med = statistics.median
    ref = targets[MLFLOW]
    lines = [
        f"Model: {model}; previous server: commit {before}",
        "",
        "| c | server | req/s | req/s vs mlflow | p50 | p99 | p99/p50 | CPU/req | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in next(iter(targets.values())).runs:
        for name, t in targets.items():
            runs = t.runs[c]
            vs = med(a["rps"] / b["rps"] for a, b in zip(runs, ref.runs[c], strict=True))
            p50, p99 = med(r["p50_ms"] for r in runs), med(r["p99_ms"] for r in runs)
            lines.append(
                f"| {c} | {name} | {med(r['rps'] for r in runs):.0f} | {vs:.2f}x | "
                f"{p50:.2f} ms | {p99:.2f} ms | {p99 / p50:.1f} | "
                f"{med(r['cpu_ms'] for r in runs):.3f} ms | {sum(r['errors'] for r in runs)} |"
            )
    lines += [
        "",
        "| server | processes | PSS idle | PSS after the load | RSS idle |",
        "|---|---|---|---|---|",
    ]
    for name, t in targets.items():
        lines.append(
            f"| {name} | {t.processes} | {t.pss_idle:.0f} MiB | {t.pss_after:.0f} MiB | "
            f"{t.rss_idle:.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="registry holding the demo models")
    parser.add_argument("--model", default="match_probability_1_TAXI_trafficaware")
    parser.add_argument("--before", default=BEFORE, help="commit of the previous server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the runs as JSON")
    args = parser.parse_args()
    started = time.time()
    registry = Registry.from_environment(args.tracking_uri)
    resolved = registry.resolve(load_fleet(ROOT / "models.yaml").only([args.model]))[0]
    store = ModelStore.from_environment()
    store.import_model(resolved, registry)
    with ExitStack() as stack:
        children = supervisor(stack)
        tree = Path(tempfile.mkdtemp(prefix="serving-before-"))
        git = ["git", "-C", str(ROOT), "worktree"]
        add = [*git, "add", "--detach", "-f", str(tree), args.before]
        subprocess.run(add, check=True, stdout=subprocess.DEVNULL)
        stack.callback(subprocess.run, [*git, "remove", "--force", str(tree)], check=False)
        targets = {
            NOW: start_now(children, resolved, store),
            PREVIOUS: start_previous(children, resolved, store, tree),
            MLFLOW: start_mlflow(children, resolved, registry),
            NOOP: start_noop(children),
        }
        measure(targets, args)
    print(table(targets, args.model, args.before))
    if args.out:
        data = {
            name: {"runs": t.runs, "pss_idle": t.pss_idle, "pss_after": t.pss_after}
            for name, t in targets.items()
        }
        args.out.write_text(json.dumps(data, indent=2))
    load = os.getloadavg()
    print(
        f"\n{time.time() - started:.0f} s; load average at the end {load[0]:.1f}; "
        f"{os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
