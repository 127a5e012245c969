"""Memory of `fleet serve`: the demo fleet packed (as models.yaml says) against --dedicated.

    uv run python -m benchmarks.serve_memory [--tracking-uri URI] [--rounds 1]

Each way in turn: starts `fleet serve --port <free>` on the registry (from the repository,
so with its models.yaml and model store), waits for its "serving N/N models" line, calls
every route once through the router (16 records) so that each model has predicted, waits
`--settle` seconds, sums PSS over the process tree of `fleet serve` (itself, the router,
the model servers), and stops it with SIGTERM. PSS splits the pages processes share, so
the sum is what the tree costs; RSS would count the shared libraries once per process.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO

import httpx
import psutil

from benchmarks.common import process_tree
from benchmarks.router import ROOT
from fleet.host.processes import free_port
from fleet.host.registry import Registry
from fleet.schema import random_records
from fleet.serving.config import ENV_PACK
from fleet.specfile import load_fleet

WAYS: dict[str, list[str]] = {"packed": [], "dedicated": ["--dedicated"]}
KINDS = ("fleet serve", "router", "pack servers", "one-model servers")


def kind(process: psutil.Process) -> str:
    """Which of KINDS `process` is (a pack server has FLEET_PACK in its environment)."""
    cmdline = " ".join(process.cmdline())
    if "-m fleet.serving" in cmdline:
        return "pack servers" if ENV_PACK in process.environ() else "one-model servers"
    if "-m fleet.router" in cmdline:
        return "router"
    return "fleet serve" if "-m fleet.cli" in cmdline else "other"


@dataclass
class Measured:
    """One start of `fleet serve`: PSS (MiB) and processes, by kind (KINDS)."""

    served: str
    pss: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)


def measure(
    flags: list[str], uri: str | None, bodies: dict[str, object], settle_s: float
) -> Measured:
    """Start `fleet serve *flags`, warm every route, measure its process tree, stop it."""
    port = free_port()
    argv = [sys.executable, "-m", "fleet.cli", "serve", "--port", str(port), *flags]
    if uri:
        argv += ["--tracking-uri", uri]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            out = Measured(wait_served(proc, log))
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                for path, body in bodies.items():
                    client.post(path, json=body).raise_for_status()
            time.sleep(settle_s)
            for process in process_tree(proc.pid):
                k = kind(process)
                try:
                    pss = process.memory_full_info().pss / 2**20
                except psutil.Error:
                    continue
                out.pss[k] = out.pss.get(k, 0.0) + pss
                out.processes[k] = out.processes.get(k, 0) + 1
            return out
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)


def wait_served(proc: subprocess.Popen[bytes], log: IO[bytes], timeout_s: float = 900) -> str:
    """Wait for `serving N/N models`; the line, or SystemExit with the log's end."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline and proc.poll() is None:
        log.seek(0)
        text = log.read().decode(errors="replace")
        found = re.search(r"serving (\d+)/(\d+) models", text)
        if found:
            if found.group(1) != found.group(2):
                raise SystemExit(f"not every model serves:\n{text[-3000:]}")
            return found.group(0)
        time.sleep(1)
    raise SystemExit(f"fleet serve did not serve ({proc.poll()=}):\n{text[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="registry holding the demo models")
    parser.add_argument("--rounds", type=int, default=1, help="starts of each way, alternated")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the warm-up")
    args = parser.parse_args()
    resolved = Registry.from_environment(args.tracking_uri).resolve(
        load_fleet(ROOT / "models.yaml")
    )
    bodies: dict[str, object] = {
        r.model.route: random_records(r.inputs, 16, seed=1) for r in resolved
    }
    runs: dict[str, list[Measured]] = {way: [] for way in WAYS}
    for i in range(args.rounds):
        ways = list(WAYS) if i % 2 == 0 else list(reversed(WAYS))
        for way in ways:
            runs[way].append(measure(WAYS[way], args.tracking_uri, bodies, args.settle))
            print(f"round {i + 1}: {way}: {runs[way][-1]}", file=sys.stderr, flush=True)
    print(table(runs))


def table(runs: dict[str, list[Measured]]) -> str:
    med = statistics.median
    kinds = list(KINDS)
    lines = [
        "| fleet serve | processes | " + " | ".join(f"PSS {k}" for k in kinds) + " | PSS total |",
        "|---" * (len(kinds) + 3) + "|",
    ]
    for way, results in runs.items():
        count = results[0].processes
        procs = " + ".join(f"{count.get(k, 0)} {k}" for k in kinds)
        parts = [med(r.pss.get(k, 0.0) for r in results) for k in kinds]
        total = med(sum(r.pss.values()) for r in results)
        cells = " | ".join(f"{p:.0f} MiB" for p in parts)
        lines.append(f"| {way} | {procs} | {cells} | {total:.0f} MiB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
