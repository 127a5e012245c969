"""`fleet`: the command line. Each subcommand lives in `fleet/commands/<name>.py`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fleet.registry import ResolutionError
from fleet.spec import SpecError

# Module names under fleet.commands, in the order `fleet --help` lists them.
COMMANDS = ("serve", "validate", "routes", "demo_registry", "build", "profile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="Deploy and run a fleet of small MLflow models (see models.yaml).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fleet.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fleet.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (SpecError, ResolutionError) as exc:
        print(f"error: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
