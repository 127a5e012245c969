"""What a model costs in a pack server, against the same model served alone.

    uv run python -m benchmarks.packing [--tracking-uri URI] [--model NAME]
        [--concurrency 1 64] [--seconds 5] [--rounds 3]

Three servers at once: `--model` alone (`python -OO -m fleet.serving`), the same model
alone once more (a second one-model server, so that each one-model figure is measured
beside a twin), and a pack server of every demo model but the big random forest
(`FLEET_PACK`), `--model` among them.

Memory: each process's USS (its private pages) and PSS idle, after a warm-up of every
model. The extra memory per packed model is (pack - one-model server) / (models - 1),
by USS and by PSS; the two one-model servers show how much a process's figure varies.
Latency: `--model` alone and in the pack, taking turns in rotating rounds (the lean load
loop of benchmarks/router.py, one record per request); medians, and the per-round ratio
of the pack's requests/s and p50 to alone's. CPU/req is the server process's CPU time per answered
request, and the load generator's own CPU time per request (this process) beside it.
The load generator's ceiling, a no-op ASGI app (benchmarks/serving.py) under
uvicorn, takes its turn in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass

import psutil

from benchmarks.router import ROOT, Load, Result, cpu_s, start, supervisor
from benchmarks.serving import NOOP, start_noop
from fleet.host.demo_registry import BIG_MODEL
from fleet.host.model_server import pack_command, pack_path, server_command
from fleet.host.model_store import ModelStore
from fleet.host.processes import free_port
from fleet.host.registry import Registry
from fleet.schema import random_records
from fleet.specfile import load_fleet


@dataclass(frozen=True)
class Run:
    """One measurement, with the CPU time per answered request of the server and of
    the load generator (this process)."""

    res: Result
    server_cpu_ms: float
    generator_cpu_ms: float


def memory(pid: int) -> tuple[float, float]:
    """(USS, PSS) of one process in MiB."""
    info = psutil.Process(pid).memory_full_info()
    return info.uss / 2**20, info.pss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="registry holding the demo models")
    parser.add_argument("--model", default="match_probability_1_TAXI_trafficaware")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.time()
    registry = Registry.from_environment(args.tracking_uri)
    resolved = [
        r for r in registry.resolve(load_fleet(ROOT / "models.yaml")) if r.name != BIG_MODEL
    ]
    store = ModelStore.from_environment()
    tagged = [(r, store.import_model(r, registry)) for r in resolved]
    one = next(r for r in resolved if r.name == args.model)
    bodies = [{"records": [r]} for r in random_records(one.inputs, 500, seed=0)]
    with ExitStack() as stack:
        children = supervisor(stack)
        pids: dict[str, int] = {}
        loads: dict[str, Load] = {}
        for name in ("alone", "alone, twin"):
            port = free_port()
            argv, env = server_command(one, port, store)
            url = f"http://127.0.0.1:{port}"
            pids[name] = start(children, name.replace(", ", "-"), argv, url, env=env).pid
            loads[name] = Load(f"{url}/predict", bodies)
        port = free_port()
        argv, env = pack_command(tagged, port, store)
        url = f"http://127.0.0.1:{port}"
        pids["pack"] = start(children, "pack", argv, url, env=env, timeout_s=600).pid
        loads["in the pack"] = Load(f"{url}{pack_path(one.name)}/predict", bodies)
        noop = start_noop(children)
        loads[NOOP], pids[NOOP] = noop.load, noop.pid
        for r in resolved:  # every packed model has answered once
            records = random_records(r.inputs, 16, seed=1)
            Load(f"{url}{pack_path(r.name)}/predict", [{"records": records}]).run(1, 0.2)
        for load in loads.values():
            load.run(16, 2.0)
        time.sleep(1)
        mem = {name: memory(pid) for name, pid in pids.items() if name != NOOP}
        runs: dict[int, dict[str, list[Run]]] = {}
        names = ["alone", "in the pack", NOOP]
        server = {"alone": pids["alone"], "in the pack": pids["pack"], NOOP: pids[NOOP]}
        for c in args.concurrency:
            runs[c] = {name: [] for name in names}
            for i in range(args.rounds):
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    before = cpu_s(server[name]), time.process_time()
                    res = loads[name].run(c, args.seconds)
                    n = max(1, round(res.rps * args.seconds))
                    cpu_ms = (cpu_s(server[name]) - before[0]) * 1000 / n
                    own_ms = (time.process_time() - before[1]) * 1000 / n
                    runs[c][name].append(Run(res, cpu_ms, own_ms))
    print(table(mem, runs, len(resolved), one.name))
    load_avg = os.getloadavg()[0]
    print(f"\n{time.time() - started:.0f} s; load average at the end {load_avg:.1f}")


def table(
    mem: dict[str, tuple[float, float]],
    runs: dict[int, dict[str, list[Run]]],
    n: int,
    name: str,
) -> str:
    med = statistics.median
    lines = [
        f"Pack: {n} demo models; measured model: {name}",
        "",
        "| process | USS idle | PSS idle |",
        "|---|---|---|",
    ]
    for proc, (uss, pss) in mem.items():
        lines.append(f"| {proc} | {uss:.1f} MiB | {pss:.1f} MiB |")
    uss_extra = (mem["pack"][0] - mem["alone"][0]) / (n - 1)
    pss_extra = (mem["pack"][1] - mem["alone"][1]) / (n - 1)
    lines += [
        "",
        f"Extra per packed model: {uss_extra:.1f} MiB USS, {pss_extra:.1f} MiB PSS",
        "",
        "| c | served | req/s | req/s this / alone | p50 | p50 this / alone | p99 | "
        "CPU/req server | CPU/req generator | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, by in runs.items():
        for served, results in by.items():
            pairs = list(zip((r.res for r in results), (r.res for r in by["alone"]), strict=True))
            rps = med(a.rps / b.rps for a, b in pairs)
            p50 = med(a.p50_ms / b.p50_ms for a, b in pairs)
            lines.append(
                f"| {c} | {served} | {med(r.res.rps for r in results):.0f} | {rps:.2f} | "
                f"{med(r.res.p50_ms for r in results):.2f} ms | {p50:.2f} | "
                f"{med(r.res.p99_ms for r in results):.2f} ms | "
                f"{med(r.server_cpu_ms for r in results):.3f} ms | "
                f"{med(r.generator_cpu_ms for r in results):.3f} ms | "
                f"{sum(r.res.errors for r in results)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
