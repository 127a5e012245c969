"""Benchmark the model server against `mlflow models serve`, side by side in one run.

    uv run python -m benchmarks.serving [--duration 4] [--rounds 3] [--out results.json]

For one demo model: our BentoML server with batching on, with batching off, and
`mlflow models serve` (one worker each, like one pod), all running at once and taking
turns, at concurrency 1, 16 and 64: requests/s, p50, p99 (medians over rounds), errors,
and PSS of each server's process tree (idle and after load). One record per request, the
shape of the router's traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import pss_mib, run_load
from fleet.host.demo_registry import create_demo_registry
from fleet.host.environment import HOST
from fleet.host.model_server import server_command
from fleet.host.model_store import ModelStore
from fleet.host.processes import Child, Supervisor, free_port, wait_ready
from fleet.host.registry import Registry, local_tracking_uri
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from fleet.specfile import load_fleet

ROOT = Path(__file__).resolve().parent.parent


def with_batching(resolved: ResolvedModel, enabled: bool) -> ResolvedModel:
    settings = resolved.model.settings
    batching = settings.batching.model_copy(update={"enabled": enabled})
    model = resolved.model.model_copy(
        update={"settings": settings.model_copy(update={"batching": batching})}
    )
    return replace(resolved, model=model)


def start(
    children: Supervisor, name: str, argv: list[str], env: dict[str, str], url: str, path: str
) -> Child:
    """Start a server and wait until `GET <url><path>` answers 200."""
    started = children.start(name, argv, env, url)
    for _, why in wait_ready([started], 300, path=path):
        raise RuntimeError(f"{name} never ready: {why}\n{started.log_tail(40)}")
    return started


async def noop_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers `[0.5]` at once: the load generator's own ceiling."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"[0.5]"})


def measure(
    servers: dict[str, tuple[Child, str, list[Any]]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every level, in rounds that take turns between the servers; medians over rounds.

    Taking turns spreads the noise of a shared machine over all servers alike, so the
    side-by-side ratios hold even when the absolute numbers drift.
    """
    for _, url, bodies in servers.values():
        run_load(url, bodies, concurrency=16, duration_s=2)  # warm-up
    idle = {name: pss_mib(proc.pid) for name, (proc, _, _) in servers.items()}
    rows = []
    for c in args.concurrency:
        runs: dict[str, list[Any]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (_, url, bodies) in servers.items():
                runs[name].append(run_load(url, bodies, concurrency=c, duration_s=args.duration))
        for name, results in runs.items():
            row = {
                "server": name,
                "concurrency": c,
                "rps": round(statistics.median(r.rps for r in results), 1),
                "p50_ms": round(statistics.median(r.p50_ms for r in results), 2),
                "p99_ms": round(statistics.median(r.p99_ms for r in results), 2),
                "errors": sum(r.errors for r in results),
                "requests": sum(r.requests for r in results),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for row in rows:
        proc = servers[row["server"]][0]
        row.update(
            pss_idle_mib=round(idle[row["server"]], 1), pss_after_mib=round(pss_mib(proc.pid), 1)
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="match_probability_1_TAXI_trafficaware")
    parser.add_argument("--tracking-uri", default=None, help="default: a fresh demo registry")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server and level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    # $BENTOML_HOME when set, else a fresh store of this run.
    store = ModelStore(HOST.bentoml_home or (work / "bentoml").resolve())
    if args.tracking_uri is None:
        registry = Registry(local_tracking_uri(work))
        create_demo_registry(registry, work / "artifacts", progress=lambda _: None)
    else:
        registry = Registry.from_environment(args.tracking_uri)
    fleet = load_fleet(ROOT / "models.yaml").only([args.model])
    resolved = registry.resolve(fleet)[0]
    tag = store.import_model(resolved, registry)
    records = random_records(resolved.inputs, 500, seed=0)
    servers: dict[str, tuple[Child, str, list[Any]]] = {}
    children = Supervisor(work / "logs")
    try:
        for enabled in (True, False):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            variant = with_batching(resolved, enabled)
            argv, env = server_command(variant, port, store, bento_model_tag=tag)
            on = "on" if enabled else "off"
            server = start(children, f"bentoml-batching-{on}", argv, env, url, "/readyz")
            bodies = [{"records": [r]} for r in records]
            servers[f"fleet BentoML, batching {on}"] = (server, f"{url}/predict", bodies)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
        argv = [mlflow_cli, "models", "serve", "-m", resolved.model_uri, "--env-manager", "local"]
        argv += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
        # mlflow runs `uvicorn` by name: the venv's bin must be on PATH.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        server = start(children, "mlflow", argv, {**registry.env(), "PATH": path}, url, "/ping")
        bodies = [{"dataframe_records": [r]} for r in records]
        servers["mlflow models serve"] = (server, f"{url}/invocations", bodies)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "uvicorn", "benchmarks.serving:noop_app", "--port", str(port)]
        server = start(children, "noop", [*argv, "--log-level", "warning"], {}, url, "/")
        servers["no-op ASGI app (generator ceiling)"] = (server, f"{url}/", [{}])
        rows = measure(servers, args)
    finally:
        children.stop_all(grace_s=20)

    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| server | c | req/s | p50 ms | p99 ms | errors | PSS idle / after MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['server']} | {r['concurrency']} | {r['rps']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['errors']} | {r['pss_idle_mib']} / {r['pss_after_mib']} |"
        )


if __name__ == "__main__":
    sys.exit(main())
