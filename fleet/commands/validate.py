"""`fleet validate`: check models.yaml and resolve it against the registry."""

from __future__ import annotations

import argparse
from typing import Any

from fleet.commands import add_fleet_args, fleet_of, registry
from fleet.commands.routes import DEFAULT_BACKEND, backend_from_template
from fleet.routes import build_routes_config


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "validate", help="check models.yaml against the registry, one line per route"
    )
    add_fleet_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fleet = fleet_of(args)
    resolved = registry(args).resolve(fleet)
    # The checks the router's config gets too (a shadow's columns against its route's).
    build_routes_config(fleet, resolved, backend_from_template(DEFAULT_BACKEND))
    by_name = {r.name: r for r in resolved}
    shadows = fleet.shadows()

    def shadow(route: str) -> str:
        s = shadows.get(route)
        return f"; shadow {s.model} v{by_name[s.model].version} {s.percent:g}%" if s else ""

    width = max(len(r.model.route) for r in resolved) if resolved else 0
    for r in resolved:
        inputs = ", ".join(f"{c.name}:{c.type}{'' if c.required else '?'}" for c in r.inputs)
        print(f"{r.model.route:<{width}}  {r.name} v{r.version}  ({inputs}){shadow(r.model.route)}")
    for exp in fleet.experiments:
        arms = ", ".join(f"{v.model} v{by_name[v.model].version} {v.weight}%" for v in exp.variants)
        print(f"{exp.route:<{width}}  experiment [{exp.sticky_header}]: {arms}{shadow(exp.route)}")
    print(f"ok: {len(resolved)} models, {len(fleet.experiments)} experiments")
    return 0
