"""The routes config of a fleet: which model server serves each business path.

`build_routes_config` turns the fleet and its resolved models into the document the
router reads (format: `fleet.router.config`). A pure function: the Pulumi program puts
its result in a ConfigMap, `fleet serve` writes it to a file, `fleet routes` prints it.

The config depends on what the fleet is, not on how models.yaml lists it: routes and
experiments are sorted by path and an experiment's variants by model name, so reordering
models.yaml gives the same bytes, the same content-named ConfigMap and no router rollout.
(The router gives variants consecutive ranges of sticky points in the order the config
lists them, so that order is part of which variant a caller gets: it must not follow the
order of lines in a file.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleet.errors import SpecError
from fleet.resolved import ResolvedModel
from fleet.router.config import CONFIG_VERSION, RouterLimits, parse_routes_config
from fleet.router.validation import merged_columns
from fleet.schema import feed_problems
from fleet.spec import Fleet

__all__ = ["RouterLimits", "build_routes_config"]


def build_routes_config(
    fleet: Fleet,
    resolved: list[ResolvedModel],
    backend_url: Callable[[ResolvedModel], str],
    *,
    limits: RouterLimits | None = None,
) -> dict[str, Any]:
    """The routes config (JSON-serialisable) for `resolved` models of `fleet`.

    `backend_url` gives each model server's base URL (a Kubernetes Service URL or a
    local port). Experiments whose variants are not all among `resolved` are left out,
    and so are shadows whose model is not. Raises SpecError for a shadow whose signature
    cannot take its route's records.
    """
    limits = limits or fleet.router
    by_name = {r.name: r for r in resolved}
    shadows = _shadows(fleet, by_name)
    routes = [
        {
            "path": r.model.route,
            "model": r.name,
            "version": r.version,
            "backend": backend_url(r).rstrip("/"),
            "inputs": [c.to_dict() for c in r.inputs],
            "timeout_s": limits.timeout_s,
            **shadows.get(r.model.route, {}),
        }
        for r in sorted(resolved, key=lambda r: (r.model.route, r.name))
    ]
    experiments = [
        {
            "path": e.route,
            "sticky_header": e.sticky_header,
            "variants": [
                {"model": v.model, "weight": v.weight}
                for v in sorted(e.variants, key=lambda v: (v.model, v.weight))
            ],
            **shadows.get(e.route, {}),
        }
        for e in sorted(fleet.experiments, key=lambda e: e.route)
        if all(v.model in by_name for v in e.variants)
    ]
    config = {
        "version": CONFIG_VERSION,
        "limits": limits.model_dump(),
        "routes": routes,
        "experiments": experiments,
    }
    # Fail here, not in the router pod: the builder only emits configs the loader accepts.
    parse_routes_config(config)
    return config


def _shadows(fleet: Fleet, by_name: dict[str, ResolvedModel]) -> dict[str, dict[str, Any]]:
    """route path -> its `shadow` entry, for the routes whose shadow model is among the
    resolved ones; raises SpecError, naming the line, for a shadow whose signature cannot
    take the route's records."""
    owners = {m.route: (f"model '{m.name}'", [m.name]) for m in fleet.models}
    for e in fleet.experiments:
        owners[e.route] = (f"experiment '{e.route}'", [v.model for v in e.variants])
    out: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for route, shadow in sorted(fleet.shadows().items()):
        who, names = owners[route]
        models = [by_name.get(name) for name in names]
        target = by_name.get(shadow.model)
        if target is None or not all(models):
            continue  # the shadow or the route is not part of this config
        try:
            given = merged_columns(route, [m.inputs for m in models if m is not None])
        except ValueError:
            continue  # an experiment whose variants disagree: refused by the config itself
        where = fleet.shadow_line(route)
        for problem in feed_problems(given, target.inputs):
            what = f"{who}: shadow.model: '{shadow.model}' cannot take the route's records"
            problems.append(f"{where + ': ' if where else ''}{what}: {problem}")
        out[route] = {"shadow": {"model": shadow.model, "percent": shadow.percent}}
    if problems:
        raise SpecError(problems)
    return out
