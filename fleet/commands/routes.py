"""`fleet routes`: print the router's routes config for models.yaml and the registry."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from fleet.commands import add_fleet_args, fleet_of, registry
from fleet.errors import ConfigError
from fleet.resolved import ResolvedModel
from fleet.routes import build_routes_config

DEFAULT_BACKEND = "http://{k8s_name}:3000"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "routes", help="print the router's routes config (JSON) for models.yaml"
    )
    add_fleet_args(parser)
    parser.add_argument(
        "--backend-template",
        default=DEFAULT_BACKEND,
        help="backend URL per model; {k8s_name}, {name} and {version} are filled in "
        f"(default: {DEFAULT_BACKEND})",
    )
    # Unset flags keep the value of models.yaml's `router:` section (or its default).
    parser.add_argument("--max-batch", type=int, default=None, help="records per request")
    parser.add_argument("--max-body-bytes", type=int, default=None, help="request body bytes")
    parser.add_argument("--timeout", type=float, default=None, help="backend call seconds")
    parser.add_argument(
        "--backend-calls",
        type=int,
        default=None,
        help="calls in flight per model server before requests wait and go together "
        "as one call (0: one call per request)",
    )
    parser.add_argument(
        "--shadow-calls",
        type=int,
        default=None,
        help="shadow calls in flight per route; requests picked beyond are not copied",
    )
    parser.set_defaults(func=run)


def backend_from_template(template: str) -> Callable[[ResolvedModel], str]:
    """A `backend_url` function filling `template` from a resolved model."""

    def url(r: ResolvedModel) -> str:
        return template.format(k8s_name=r.model.k8s_name, name=r.name, version=r.version)

    return url


FLAGS = {
    "max_batch": "--max-batch",
    "max_body_bytes": "--max-body-bytes",
    "timeout_s": "--timeout",
    "backend_calls": "--backend-calls",
    "shadow_calls": "--shadow-calls",
}


def run(args: argparse.Namespace) -> int:
    flags = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in FLAGS.items()}
    try:
        fleet = fleet_of(args).with_router_limits(
            {k: v for k, v in flags.items() if v is not None}, name_of=FLAGS.__getitem__
        )
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    resolved = registry(args).resolve(fleet)
    config = build_routes_config(fleet, resolved, backend_from_template(args.backend_template))
    print(json.dumps(config, indent=2))
    return 0
