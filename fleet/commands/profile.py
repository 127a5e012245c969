"""`fleet profile`: measure models' memory under load and recommend their pod memory."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from profiler.cli import add_arguments, run

    parser: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help="measure each model's memory under load; the pre-deploy gate",
        description="Start each model's server, load it with random requests from its "
        "signature, measure memory and recommend the pod's memory request and limit. "
        "Exits 1 when a model fails the gate. See docs/profiler.md.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
