"""What a shadow costs the callers of its route: the same route with no shadow, with a
shadow that hangs, one that answers 500, and one that answers, all at 100%.

    uv run python -m benchmarks.shadow [--tracking-uri URI] [--model NAME]
        [--backend model|echo] [--concurrency 1 16 64] [--seconds 5] [--rounds 3]

One model server answers the route (the real model server of the model, or `--backend
echo`). Four routers (`python -m fleet.router`, default limits: `shadow_calls` 4) route
to it; three copy every request to a shadow played by the echo stand-in
(tests/support.py): `hang` never answers (each copy waits for its 1 s timeout, so nearly
all are dropped), `fail` answers 500, `ok` answers. The model server called directly is
the reference. The lean load loop of benchmarks/router.py measures each target,
interleaved and rotated every round; the load loop's own CPU per request is shown, to
show it is lighter than what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from benchmarks.router import ECHO_APP, ROOT, Load, Result, cpu_s, start, start_backend, supervisor
from fleet.host.processes import Supervisor, free_port
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from fleet.specfile import load_fleet

SHADOWS = ("hang", "fail", "ok")


def start_echo(children: Supervisor) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", ECHO_APP, "--port", str(port)]
    argv += ["--log-level", "warning", "--no-access-log"]
    url = f"http://127.0.0.1:{port}"
    start(children, "shadow-echo", argv, url)
    return url


def start_router(
    children: Supervisor, resolved: ResolvedModel, backend: str, echo: str, shadow: str | None
) -> tuple[str, int]:
    """A router with the model's route and, with `shadow`, a copy of all of its requests
    to the echo stand-in playing `shadow`."""
    from fleet.routes import build_routes_config

    fleet = load_fleet(ROOT / "models.yaml").only([resolved.name])
    config = build_routes_config(fleet, [resolved], lambda _: backend)
    if shadow is not None:
        route = config["routes"][0]
        config["routes"].append(
            {**route, "path": f"/{shadow}", "model": shadow, "backend": f"{echo}/{shadow}"}
            | {"timeout_s": 1.0}
        )
        route["shadow"] = {"model": shadow, "percent": 100}
    tmp = Path(tempfile.mkdtemp(prefix="router-", dir=children.log_dir))
    (tmp / "routes.json").write_text(json.dumps(config))
    port = free_port()
    argv = [sys.executable, "-m", "fleet.router", "--config", str(tmp / "routes.json")]
    argv += ["--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    router = start(children, f"router-{shadow}", argv, url, timeout_s=60)
    return url + resolved.model.route, router.pid


def measure(args: argparse.Namespace) -> dict[str, Any]:
    me = psutil.Process()
    with ExitStack() as stack:
        children = supervisor(stack)
        resolved, backend, what, backend_pid = start_backend(children, args)
        echo = start_echo(children)
        records = random_records(resolved.inputs, 200, seed=0)
        targets: dict[str, tuple[Load, int | None]] = {
            "direct": (Load(backend + "/predict", [{"records": [r]} for r in records]), None)
        }
        for shadow in (None, *SHADOWS):
            url, pid = start_router(children, resolved, backend, echo, shadow)
            targets[f"router, shadow {shadow or 'none'}"] = (Load(url, records), pid)
        results: dict[int, dict[str, list[tuple[Result, float]]]] = {}
        for c in args.concurrency:
            results[c] = {name: [] for name in targets}
            for load, _ in targets.values():
                load.run(c, 1.0)  # warm up every pool
            names = list(targets)
            for i in range(args.rounds):
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    load, pid = targets[name]
                    mine = sum(me.cpu_times()[:2])
                    before = (cpu_s(pid) if pid else 0.0), cpu_s(backend_pid)
                    res = load.run(c, args.seconds)
                    n = max(1, round(res.rps * args.seconds))
                    loader = (sum(me.cpu_times()[:2]) - mine) * 1000 / n
                    res = Result(
                        res.rps,
                        res.p50_ms,
                        res.p99_ms,
                        res.errors,
                        hop_cpu_ms=(cpu_s(pid) - before[0]) * 1000 / n if pid else 0.0,
                        backend_cpu_ms=(cpu_s(backend_pid) - before[1]) * 1000 / n,
                    )
                    results[c][name].append((res, loader))
                    print(
                        f"c={c:<3} {name:<22} {res.rps:8.1f} req/s  p50 {res.p50_ms:7.2f} ms  "
                        f"p99 {res.p99_ms:7.2f} ms  errors {res.errors}  router CPU "
                        f"{res.hop_cpu_ms:.3f} ms/req  load loop CPU {loader:.3f} ms/req",
                        file=sys.stderr,
                    )
    return {"backend": what, "results": results}


def table(data: dict[str, Any]) -> str:
    """Medians over rounds; ratios to the route without a shadow are medians of the
    per-round ones."""
    med = statistics.median
    lines = [
        f"Backend: {data['backend']}",
        "",
        "| c | target | req/s | req/s vs no shadow | p50 | p99 | p99 vs no shadow | "
        "CPU/req router | CPU/req load loop | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, by in data["results"].items():
        base = [r for r, _ in by["router, shadow none"]]
        for name, runs in by.items():
            got = [r for r, _ in runs]
            pairs = list(zip(got, base, strict=True))
            routed = name != "direct"
            vs = f"{med(a.rps / b.rps for a, b in pairs):.0%}" if routed else ""
            p99 = f"{med(a.p99_ms / b.p99_ms for a, b in pairs):.2f}x" if routed else ""
            hop = f"{med(x.hop_cpu_ms for x in got):.2f} ms" if routed else ""
            lines.append(
                f"| {c} | {name} | {med(x.rps for x in got):.0f} | {vs} | "
                f"{med(x.p50_ms for x in got):.2f} ms | {med(x.p99_ms for x in got):.1f} ms | "
                f"{p99} | {hop} | {med(x for _, x in runs):.2f} ms | "
                f"{sum(x.errors for x in got)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="registry holding the demo models")
    parser.add_argument("--model", default="match_probability_2_TAXI_trafficaware")
    parser.add_argument("--backend", choices=["model", "echo"], default="model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.time()
    data = measure(args)
    print(table(data))
    load = os.getloadavg()
    print(
        f"\n{time.time() - started:.0f} s; load average at the end {load[0]:.1f}; "
        f"{os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
