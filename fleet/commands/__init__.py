"""Subcommands of `fleet`; each module has `register(subparsers)`."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleet.registry import default_tracking_uri


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


def tracking_uri(args: argparse.Namespace) -> str:
    return str(args.tracking_uri or default_tracking_uri())
