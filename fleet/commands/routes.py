"""`fleet routes`: print the router's routes config for models.yaml and the registry."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from fleet.commands import add_fleet_args, fleet_of, registry
from fleet.resolved import ResolvedModel
from fleet.routes import RouterLimits, build_routes_config

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
    parser.add_argument("--max-batch", type=int, default=RouterLimits().max_batch)
    parser.add_argument("--max-body-bytes", type=int, default=RouterLimits().max_body_bytes)
    parser.add_argument("--timeout", type=float, default=RouterLimits().timeout_s)
    parser.add_argument(
        "--backend-calls",
        type=int,
        default=RouterLimits().backend_calls,
        help="calls in flight per model server before requests wait and go together "
        "as one call (0: one call per request)",
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
}


def run(args: argparse.Namespace) -> int:
    try:
        limits = RouterLimits(
            max_batch=args.max_batch,
            max_body_bytes=args.max_body_bytes,
            timeout_s=args.timeout,
            backend_calls=args.backend_calls,
        )
    except ValidationError as exc:
        for e in exc.errors(include_url=False):
            print(f"error: {FLAGS[str(e['loc'][0])]}: {e['msg']}", file=sys.stderr)
        return 2
    fleet = fleet_of(args)
    resolved = registry(args).resolve(fleet)
    config = build_routes_config(
        fleet, resolved, backend_from_template(args.backend_template), limits=limits
    )
    print(json.dumps(config, indent=2))
    return 0
