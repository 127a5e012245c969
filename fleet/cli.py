"""`fleet`: the command line. Each subcommand lives in `fleet/commands/<name>.py`.

One handler for every command: a `fleet.errors.FleetError` is printed as its problems,
one per line, and exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fleet.errors import FleetError

# Module names under fleet.commands, in the order `fleet --help` lists them.
COMMANDS = ("serve", "validate", "routes", "demo_registry", "build", "profile", "place")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="Deploy and run a fleet of small MLflow models (see models.yaml).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fleet.commands.{name}").register(sub)
    return parser


def report(exc: FleetError) -> None:
    """Print a FleetError's problems to stderr, one per line."""
    if str(exc) != "\n".join(exc.problems):  # a message of its own (the profile gate's)
        print(f"error: {exc}", file=sys.stderr)
        return
    print(f"error: {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except FleetError as exc:
        report(exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
