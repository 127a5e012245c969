"""`fleet demo-registry`: train and register the demo models into a local MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleet.registry import LOCAL_HOME, default_tracking_uri


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
    # Imported here: fleet.demo pulls in pandas, scikit-learn and mlflow.pyfunc, which
    # every other command (all of them build this parser) would otherwise pay for.
    from fleet.demo import create_demo_registry

    home: Path = args.home
    home.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or default_tracking_uri(home)
    print(f"demo registry at {uri}")
    names = create_demo_registry(uri, home / "artifacts")
    print(f"ok: {len(names)} models, alias 'champion' on each")
    return 0
