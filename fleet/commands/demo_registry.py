"""`fleet demo-registry`: train and register the demo models into a local MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleet.host.environment import LOCAL_HOME
from fleet.host.registry import Registry, local_tracking_uri


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo-registry", help="train and register the demo models into a local MLflow"
    )
    parser.add_argument(
        "--home", type=Path, default=LOCAL_HOME, help="folder for mlflow.db and artifacts"
    )
    parser.add_argument("--tracking-uri", default=None, help="default: <home>/mlflow.db")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the demo pulls in pandas and mlflow.pyfunc, which every other command
    # (all of them build this parser) would otherwise pay for.
    from fleet.host.demo_registry import create_demo_registry

    home: Path = args.home
    home.mkdir(parents=True, exist_ok=True)
    registry = Registry.from_environment(args.tracking_uri or local_tracking_uri(home))
    print(f"demo registry at {registry.uri}")
    names = create_demo_registry(registry, home / "artifacts")
    print(f"ok: {len(names)} models, alias 'champion' on each")
    return 0
