"""`fleet place`: measure the packed models and write the placement file.

Every packed model whose measurement in the placement file is not for its current image
(a new model, a new version, new code) is profiled in pack mode (`profiler`, `pack=True`:
its baseline and what it adds to a pack); then `fleet.packing.place` keeps every model
in its pack unless that pack no longer fits, places new models first-fit decreasing, and
the file is written. Commit it: `pulumi preview`/`up` and `fleet serve` place by it.

Exit codes: 0 written (or, with `--check`, already up to date), 1 a model failed the
profile gate (nothing is written) or `--check` found the file out of date.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleet.commands import add_fleet_args, fleet_of, registry
from fleet.errors import FleetError
from fleet.packing import (
    PackSize,
    PlacementFile,
    check_names,
    pack_memory,
    place,
    placement_path,
    read_placement,
    write_placement,
)
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from profiler.cache import DEFAULT_DIR, ProfileCache
from profiler.load import LoadPlan
from profiler.parallel import profile_fleet
from profiler.run import ProfileOptions, content_hash_of, make_backend


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "place",
        help="measure packed models and place them into packs (writes placement.yaml)",
        description="Profile each packed model whose measurement is not for its current "
        "image, place the fleet's packed models into packs by those numbers (existing "
        "models stay where they are), and write the placement file. See docs/packing.md.",
    )
    add_fleet_args(parser)
    parser.add_argument(
        "--backend",
        choices=("process", "docker"),
        default="process",
        help="process: local processes (default); docker: the model image",
    )
    parser.add_argument("--duration", type=float, default=6.0, metavar="S", help="load (6)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="models at once")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_DIR, metavar="DIR")
    parser.add_argument("--no-cache", action="store_true", help="profile even when cached")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the file is not what placing now gives (for CI)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.parallel < 1:
        raise FleetError("--duration and --parallel must be positive")
    fleet = fleet_of(args)
    if not fleet.packing.enabled:
        raise FleetError(
            f"{args.models}: packing is off; nothing to place (set packing: {{enabled: true}})"
        )
    path = placement_path(args.models, fleet.packing)
    before = read_placement(path)
    source = registry(args)
    resolved = source.resolve(fleet)
    packed = [r for r in resolved if r.model.packed]
    stale = [r for r in packed if _stale(r, before)]
    sizes = {r.name: before.sizes[r.name] for r in packed if r not in stale}
    if stale:
        print(f"measuring {len(stale)} of {len(packed)} packed models in pack mode ...")
        outcomes = profile_fleet(
            stale,
            source,
            backend=make_backend(args.backend),
            options=ProfileOptions(plan=LoadPlan(duration_s=args.duration)),
            parallel=args.parallel,
            cache=None if args.no_cache else ProfileCache(args.cache_dir),
            pack=True,
        )
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            for o in failed:
                print(o.error)
            print(f"\n{len(failed)} model(s) failed the profile gate: {path} is unchanged")
            return 1
        for o in outcomes:
            if o.report is None or o.report.pack is None:
                raise FleetError(f"model '{o.model}': the profile has no pack measurement")
            p = o.report.pack
            sizes[o.model] = PackSize(
                baseline_p95_mib=p.baseline_p95_mib,
                baseline_peak_mib=p.baseline_peak_mib,
                marginal_p95_mib=p.marginal_p95_mib,
                marginal_peak_mib=p.marginal_peak_mib,
                content_hash=o.report.content_hash,
            )
    dedicated = [r.model.k8s_name for r in resolved if not r.model.packed]
    placement = place(sizes, before.placement, fleet.packing, fleet.defaults.memory, dedicated)
    check_names(placement, dedicated)
    after = PlacementFile(placement, sizes)
    _report(fleet, before, after)
    if args.check:
        if after != before:
            print(f"\n{path} is out of date: run `fleet place` and commit it")
            return 1
        print(f"\n{path} is up to date")
        return 0
    write_placement(path, after)
    print(f"\nwrote {path}")
    return 0


def _stale(r: ResolvedModel, before: PlacementFile) -> bool:
    size = before.sizes.get(r.name)
    return size is None or size.content_hash != content_hash_of(r)


def _report(fleet: Fleet, before: PlacementFile, after: PlacementFile) -> None:
    budget = fleet.packing.memory_budget_mib
    for pack, models in after.placement.packs.items():
        floor = fleet.packing.min_marginal_mib
        mem = pack_memory([after.sizes[m] for m in models], fleet.defaults.memory, floor)
        print(
            f"{pack}: {len(models)} models, request {mem.request_mib}Mi, limit "
            f"{mem.limit_mib}Mi (budget {budget}Mi)"
        )
    for model, (was, now) in after.placement.moved(before.placement).items():
        if was is None:
            print(f"  new: {model} -> {now}")
        elif now is None:
            print(f"  removed: {model} (was in {was})")
        else:
            print(f"  moved: {model} {was} -> {now} ({was} no longer fits)")
