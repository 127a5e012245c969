"""How long the Pulumi program takes under mocks, for fleets of 50, 200 and 1000 models.

    uv run python -m benchmarks.pulumi_program [--sizes 50 200 1000] [--repeats 3]

Each run: a generated fleet (resolved in-process, no registry), the real `deploy_fleet`
under `pulumi.runtime.set_mocks` (the engine mocked, every resource registered through the
mock monitor), timed end to end. Also timed separately: `fleet.host.images.content_hash` over
the fleet (the only per-model work the program does besides building manifests), and the
first run in the process (imports of pulumi_kubernetes modules). Prints a Markdown table
of medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from fleet.host.images import BuildSettings, content_hash
from tests.graph.fleetgen import generated_fleet
from tests.graph.harness import run_program, stack_config


def time_program(n: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, resources registered) of one run."""
    from components.program import deploy_fleet

    fleet, resolved = generated_fleet(n)
    wall, cpu = time.perf_counter(), time.process_time()
    cap = run_program(lambda: deploy_fleet(stack_config(), fleet, resolved), stack="production")
    return time.perf_counter() - wall, time.process_time() - cpu, len(cap.resources)


def time_hashes(n: int) -> float:
    _, resolved = generated_fleet(n)
    settings = BuildSettings(registry="registry.example.com/model-fleet")
    start = time.perf_counter()
    for r in resolved:
        content_hash(r, settings)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    time_program(5)
    print(f"warm-up (imports, 5 models): {time.perf_counter() - start:.1f} s")
    rows = []
    for n in args.sizes:
        runs = [time_program(n) for _ in range(args.repeats)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        hashes = statistics.median(time_hashes(n) for _ in range(args.repeats))
        rows.append((n, runs[0][2], wall, cpu, cpu / n * 1000, hashes))
        detail = ", ".join(f"{w:.1f} wall / {c:.1f} cpu" for w, c, _ in runs)
        print(f"n={n}: {detail} s; load average {os.getloadavg()[0]:.1f}", flush=True)
    print()
    print("| models | resources | wall s (median) | CPU s (median) | CPU ms per model |", end="")
    print(" content_hash s (all models) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, res, wall, cpu, per, hashes in rows:
        print(f"| {n} | {res} | {wall:.1f} | {cpu:.1f} | {per:.0f} | {hashes:.2f} |")


if __name__ == "__main__":
    main()
