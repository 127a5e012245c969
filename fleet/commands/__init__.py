"""Subcommands of `fleet`, one module each with `register(subparsers)`; thin over the host layer.

A command reads its arguments, calls the core and the host layer, prints, and returns
an exit code. Errors a person must fix are `fleet.errors.FleetError`s, reported by the
one handler in `fleet.cli`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fleet.host.registry import Registry
from fleet.spec import Fleet
from fleet.specfile import load_fleet


def add_fleet_args(parser: argparse.ArgumentParser) -> None:
    """The options every command that reads the fleet shares."""
    parser.add_argument(
        "--models", type=Path, default=Path("models.yaml"), help="the fleet file (models.yaml)"
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow registry (default: $MLFLOW_TRACKING_URI, else .fleet/mlflow.db)",
    )
    parser.add_argument(
        "--alias", default=None, help="use this alias for every alias-picked model (a stack's)"
    )


def registry(args: argparse.Namespace) -> Registry:
    """The registry of `--tracking-uri`, with the credentials of the environment."""
    return Registry.from_environment(args.tracking_uri)


def fleet_of(args: argparse.Namespace) -> Fleet:
    """The fleet of `--models` on `--alias`."""
    return load_fleet(args.models).with_alias(args.alias)
