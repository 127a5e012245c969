"""`fleet profile` (also `python -m profiler`): measure models' memory under load and
recommend their pod memory; the pre-deploy gate.

Exit codes: 0 every model passed (or was cached or fixed), 1 a model failed the gate,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fleet.commands import add_fleet_args, fleet_of, registry
from fleet.host.images import BuildSettings
from profiler.cache import DEFAULT_DIR, ProfileCache
from profiler.load import LoadPlan
from profiler.parallel import profile_fleet
from profiler.report import summary_table
from profiler.run import ProfileOptions, make_backend


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help="measure each model's memory under load; the pre-deploy gate",
        description="Start each model's server, load it with random requests from its "
        "signature, measure memory and recommend the pod's memory request and limit. "
        "Exits 1 when a model fails the gate. See docs/profiler.md.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `fleet profile` / `python -m profiler`."""
    parser.add_argument("names", nargs="*", metavar="MODEL", help="models to profile")
    parser.add_argument("--all", action="store_true", help="profile every model of the fleet")
    add_fleet_args(parser)
    parser.add_argument(
        "--backend",
        choices=("process", "docker"),
        default="process",
        help="process: the server as local processes (default); docker: the model image",
    )
    parser.add_argument("--duration", type=float, default=10.0, metavar="S", help="load (10)")
    parser.add_argument("--requests", type=int, default=None, metavar="N", help="instead")
    parser.add_argument("--concurrency", type=_ints, default=(1, 4, 16), metavar="1,4,16")
    parser.add_argument("--batch-sizes", type=_ints, default=(1, 16), metavar="1,16")
    parser.add_argument("--parallel", type=int, default=2, metavar="N", help="models at once")
    parser.add_argument("--ready-timeout", type=float, default=180.0, metavar="S")
    parser.add_argument("--interval", type=float, default=0.1, metavar="S", help="sampling")
    parser.add_argument("--idle", type=float, default=2.0, metavar="S", help="idle window")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_DIR, metavar="DIR")
    parser.add_argument("--no-cache", action="store_true", help="profile even when cached")
    parser.add_argument("--registry", default=None, help="image name prefix (docker backend)")
    parser.add_argument("--base-image", default=None, help="base image (docker backend)")
    parser.add_argument(
        "--pack",
        action="store_true",
        help="also measure what each model costs in a pack server: a second run serves it "
        "twice in one process; prints the baseline and what one more copy adds",
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' needs positive integers") from None
    return values


def run(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        print("error: name the models to profile, or pass --all", file=sys.stderr)
        return 2
    bad = _bad_numbers(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    fleet = fleet_of(args)
    if args.names:
        fleet = fleet.only(list(dict.fromkeys(args.names)))
    source = registry(args)
    resolved = source.resolve(fleet)
    build = _build_settings(args)
    options = ProfileOptions(
        plan=LoadPlan(
            duration_s=args.duration,
            requests=args.requests,
            concurrencies=args.concurrency,
            batch_sizes=args.batch_sizes,
        ),
        ready_timeout_s=args.ready_timeout,
        sample_interval_s=args.interval,
        idle_s=args.idle,
        build=build,
    )
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    outcomes = profile_fleet(
        resolved,
        source,
        backend=make_backend(args.backend, build),
        options=options,
        parallel=args.parallel,
        cache=None if args.no_cache else ProfileCache(args.cache_dir),
        progress=log,
        pack=args.pack,
    )
    reports = [o.report for o in outcomes if o.report is not None]
    if args.json:
        print(json.dumps([r.to_dict() | {"cached": r.cached} for r in reports], indent=2))
    elif reports:
        print()
        print(summary_table(reports))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(f"\n{len(failed)} model(s) failed the profile gate:", file=sys.stderr)
        for o in failed:
            print(o.error, file=sys.stderr)
        return 1
    return 0


def _bad_numbers(args: argparse.Namespace) -> str | None:
    checks = {
        "--duration": args.duration > 0,
        "--requests": args.requests is None or args.requests > 0,
        "--parallel": args.parallel >= 1,
        "--ready-timeout": args.ready_timeout > 0,
        "--interval": args.interval > 0,
        "--idle": args.idle >= 0,
    }
    wrong = [name for name, ok in checks.items() if not ok]
    return f"{', '.join(wrong)}: must be positive" if wrong else None


def _build_settings(args: argparse.Namespace) -> BuildSettings | None:
    if args.registry is None and args.base_image is None:
        return None
    fields = {"registry": args.registry, "base_image": args.base_image}
    return BuildSettings(**{k: v for k, v in fields.items() if v is not None})
