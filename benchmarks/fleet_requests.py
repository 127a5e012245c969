"""Memory a generated fleet of small models requests from Kubernetes: packed against dedicated.

    uv run python -m benchmarks.fleet_requests [--tracking-uri URI] [--models 150]
        [--duration 4] [--sizes-from placement.yaml]

Measured, not assumed, per model: every packed model of models.yaml (the 10 small demo
models) is profiled now with the real profiler (process backend, `pack=True`, one model
at a time, `--duration` seconds of load per run): its own server's p95 and peak (PSS), and
its baseline and marginal in a pack server (`profiler.report.PackStats`).

Generated from those, the fleet: `--models` small models `city_<i>_<demo model>` whose
sizes cycle through the measured ones, every one packed (or, the other way, dedicated with
`defaults.replicas` pods each). Then what the model pods request, as the Pulumi program
sizes them:
- dedicated: each model's `recommend(p95, peak, defaults.memory).request_mib` times its
  replicas (the router and the platform are the same either way and left out);
- packed: `fleet.packing.place` under models.yaml's `packing`, then each pack's
  `pack_memory(members, packing.min_marginal_mib).request_mib` times `packing.replicas`
  (every marginal counted as at least `packing.min_marginal_mib`, as the program does),
  and once more with one replica per pack for a like-for-like line. Limits are summed
  the same way.

`--sizes-from placement.yaml` measures nothing: the pack sizes are the placement file's
(what `fleet place` measured) and each model's own p95 and peak come from the profile
report that the same `fleet place` run stored under the same content hash
(`.fleet/profiles/<content_hash>.json`, `--cache-dir`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.router import ROOT
from fleet.host.registry import Registry
from fleet.packing import PackSize, Placement, pack_memory, place, read_placement
from fleet.sizing import recommend
from fleet.spec import MemoryPolicy, Packing
from fleet.specfile import load_fleet
from profiler.cache import DEFAULT_DIR, ProfileCache
from profiler.load import LoadPlan
from profiler.parallel import profile_fleet
from profiler.run import ProfileOptions, make_backend


@dataclass(frozen=True)
class Measured:
    """One small model as measured: its own server (PSS, MiB) and its pack size."""

    name: str
    p95_mib: float
    peak_mib: float
    size: PackSize


@dataclass(frozen=True)
class Totals:
    """What one way of running the fleet requests, summed over its pods (MiB)."""

    pods: int
    request_mib: int
    limit_mib: int
    packs: int = 0


def measure(uri: str | None, duration_s: float) -> list[Measured]:
    """Profile every packed model of models.yaml now, pack measurement included."""
    registry = Registry.from_environment(uri)
    packed = [r for r in registry.resolve(load_fleet(ROOT / "models.yaml")) if r.model.packed]
    outcomes = profile_fleet(
        packed,
        registry,
        backend=make_backend("process"),
        options=ProfileOptions(plan=LoadPlan(duration_s=duration_s)),
        parallel=1,
        cache=None,
        pack=True,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    out = []
    for o in outcomes:
        if o.report is None or o.report.pack is None or o.status == "failed":
            raise SystemExit(f"{o.model}: not measured: {o.error}")
        r, p = o.report, o.report.pack
        size = PackSize(
            p.baseline_p95_mib,
            p.baseline_peak_mib,
            p.marginal_p95_mib,
            p.marginal_peak_mib,
            r.content_hash,
        )
        out.append(Measured(o.model, r.memory.p95_mib, r.memory.peak_mib, size))
    return out


def from_placement(path: Path, cache_dir: Path) -> list[Measured]:
    """The placement file's sizes, and each model's own p95/peak from its cached report."""
    placed = read_placement(path)
    if not placed.sizes:
        raise SystemExit(f"{path}: no measured models")
    cache = ProfileCache(cache_dir)
    out = []
    for name, size in sorted(placed.sizes.items()):
        report = cache.get(size.content_hash) if size.content_hash else None
        if report is None:
            raise SystemExit(
                f"{name}: no profile report under {cache_dir}/{size.content_hash or '?'}.json "
                "(run `fleet place`, or measure without --sizes-from)"
            )
        out.append(Measured(name, report.memory.p95_mib, report.memory.peak_mib, size))
    return out


def generate(measured: list[Measured], n: int) -> list[Measured]:
    """`n` models named `city_<i>_<name>`, sizes cycling through `measured`."""
    return [
        replace(m, name=f"city_{i}_{m.name}")
        for i, m in ((i, measured[i % len(measured)]) for i in range(n))
    ]


def dedicated(fleet: list[Measured], policy: MemoryPolicy, replicas: int) -> Totals:
    recs = [recommend(m.p95_mib, m.peak_mib, policy) for m in fleet]
    return Totals(
        pods=len(fleet) * replicas,
        request_mib=sum(r.request_mib for r in recs) * replicas,
        limit_mib=sum(r.limit_mib for r in recs) * replicas,
    )


def packed(
    fleet: list[Measured], packing: Packing, policy: MemoryPolicy, replicas: int
) -> tuple[Totals, Placement]:
    sizes = {m.name: m.size for m in fleet}
    placement = place(sizes, Placement(), packing, policy)
    mems = [
        pack_memory([sizes[m] for m in ms], policy, packing.min_marginal_mib)
        for ms in placement.packs.values()
    ]
    totals = Totals(
        pods=len(mems) * replicas,
        request_mib=sum(p.request_mib for p in mems) * replicas,
        limit_mib=sum(p.limit_mib for p in mems) * replicas,
        packs=len(mems),
    )
    return totals, placement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="registry holding the demo models")
    parser.add_argument("--models", type=int, default=150, help="size of the generated fleet")
    parser.add_argument("--duration", type=float, default=4.0, help="load per profile run (s)")
    parser.add_argument("--sizes-from", type=Path, default=None, metavar="PLACEMENT_FILE")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / DEFAULT_DIR)
    args = parser.parse_args()
    started = time.time()
    spec = load_fleet(ROOT / "models.yaml")
    policy, packing = spec.defaults.memory, spec.packing
    if args.sizes_from:
        measured = from_placement(args.sizes_from, args.cache_dir)
        source = (
            f"sizes from {args.sizes_from} and each model's own run from the profile "
            f"reports under {args.cache_dir} (what `fleet place` measured)"
        )
    else:
        measured = measure(args.tracking_uri, args.duration)
        source = (
            f"measured now: the profiler, process backend, pack=True, one model at a "
            f"time, {args.duration:g} s of load per run"
        )
    fleet = generate(measured, args.models)
    print(f"Per-model numbers: {len(measured)} small demo models, {source}.")
    print(
        f"The fleet of {args.models} is generated from them (city_<i>_<model>, sizes "
        "cycling through the measured ones); nothing of it was served.\n"
    )
    print(measured_table(measured, policy))
    ded = dedicated(fleet, policy, spec.defaults.replicas)
    lines: list[tuple[str, Totals]] = [
        (f"dedicated, {spec.defaults.replicas} replica(s) per model", ded)
    ]
    two, placement = packed(fleet, packing, policy, packing.replicas)
    one, _ = packed(fleet, packing, policy, 1)
    lines += [
        (f"packed, {packing.replicas} replicas per pack (models.yaml)", two),
        ("packed, 1 replica per pack", one),
    ]
    print()
    print(totals_table(lines, ded))
    sizes = {m.name: m.size for m in fleet}
    each = "; ".join(
        f"{p}: {len(ms)} models, request {mem.request_mib} / limit {mem.limit_mib} MiB"
        for p, ms in placement.packs.items()
        for mem in [pack_memory([sizes[m] for m in ms], policy, packing.min_marginal_mib)]
    )
    print(
        f"\nPlacement ({args.models} models, budget {packing.memory_budget_mib} MiB limit, "
        f"at most {packing.max_models} per pack): {each}"
    )
    print(f"\n{time.time() - started:.0f} s")


def measured_table(measured: list[Measured], policy: MemoryPolicy) -> str:
    lines = [
        "| model | own p95 | own peak | dedicated request / limit | baseline p95 | "
        "marginal p95 | marginal peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in measured:
        rec = recommend(m.p95_mib, m.peak_mib, policy)
        s = m.size
        lines.append(
            f"| {m.name} | {m.p95_mib:.1f} | {m.peak_mib:.1f} | {rec.request_mib} / "
            f"{rec.limit_mib} | {s.baseline_p95_mib:.1f} | {s.marginal_p95_mib:.1f} | "
            f"{s.marginal_peak_mib:.1f} |"
        )
    return "\n".join(lines) + "\n\n(MiB; own = the model's own server, PSS; pack = USS diff)"


def totals_table(lines: list[tuple[str, Totals]], ded: Totals) -> str:
    out = [
        "| model pods | packs | pods | requests | limits | dedicated / this (requests) |",
        "|---|---|---|---|---|---|",
    ]
    for what, t in lines:
        out.append(
            f"| {what} | {t.packs or '-'} | {t.pods} | {t.request_mib} MiB "
            f"({t.request_mib / 1024:.1f} GiB) | {t.limit_mib} MiB ({t.limit_mib / 1024:.1f} "
            f"GiB) | {ded.request_mib / t.request_mib:.1f}x |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
