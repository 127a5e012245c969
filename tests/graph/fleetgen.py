"""A generated fleet of any size, resolved without a registry (the registry is tested
elsewhere): ResolvedModel values built here stand in for what `resolve_fleet` returns."""

from __future__ import annotations

import dataclasses
import hashlib

import yaml

from fleet.resolved import ResolvedModel
from fleet.schema import Column
from fleet.spec import Fleet, Model
from fleet.specfile import parse_fleet

PRODUCTS = ("TAXI", "PHV")
VARIANTS = ("trafficaware", "trafficunaware")
INPUTS = [
    Column("route_decision_score", "double"),
    Column("eta_minutes", "double"),
    Column("driver_distance_km", "double"),
    Column("surge_multiplier", "double"),
    Column("hour_of_day", "long"),
]


def model_name(i: int) -> str:
    city, rest = divmod(i, 4)
    return f"match_probability_{city + 1}_{PRODUCTS[rest // 2]}_{VARIANTS[rest % 2]}"


def fleet_yaml(n: int, packing: dict[str, object] | None = None) -> str:
    """models.yaml for `n` models: pinned versions, some fixed memory, some with more
    replicas or an autoscaler, and one A/B experiment per city among the first five.

    With `packing`, the fleet packs its models; those with fixed memory, more replicas
    or an autoscaler are `dedicated` (a packed model may not set them).
    """
    models = []
    for i in range(n):
        city, rest = divmod(i, 4)
        entry: dict[str, object] = {
            "name": model_name(i),
            "version": 1 + i % 4,
            "endpoint": "probability",
            "parameters": [city + 1, PRODUCTS[rest // 2], VARIANTS[rest % 2]],
        }
        if i % 10 == 3:
            entry["memory"] = {"fixed_mib": 512}
        if i % 7 == 5:
            entry["replicas"] = 3
        if i % 13 == 6:
            entry["autoscaling"] = {"min_replicas": 2, "max_replicas": 6}
        if packing and len(entry) > 4:
            entry["dedicated"] = True
        models.append(entry)
    experiments = [
        {
            "route": f"/probability/{city}/TAXI",
            "sticky_header": "X-Caller-Id",
            "variants": [
                {"model": f"match_probability_{city}_TAXI_trafficaware", "weight": 30},
                {"model": f"match_probability_{city}_TAXI_trafficunaware", "weight": 70},
            ],
        }
        for city in range(1, min(5, n // 4) + 1)
    ]
    doc = {
        "defaults": {"replicas": 1, "cpu": "250m"},
        "models": models,
        "experiments": experiments,
    }
    if packing:
        doc["packing"] = packing
    return yaml.safe_dump(doc, sort_keys=False)


def generated_fleet(
    n: int, packing: dict[str, object] | None = None
) -> tuple[Fleet, list[ResolvedModel]]:
    fleet = parse_fleet(fleet_yaml(n, packing), f"generated-{n}.yaml")
    resolved = [resolved_model(m, m.version or 1) for m in fleet.resolved_models()]
    return fleet, resolved


def resolved_model(model: Model, version: int) -> ResolvedModel:
    name = model.name
    run_id = hashlib.sha256(f"{name}/{version}".encode()).hexdigest()[:32]
    return ResolvedModel(
        model=model,
        version=version,
        model_uri=f"models:/{name}/{version}",
        run_id=run_id,
        source=f"mlflow-artifacts:/1/{run_id}/artifacts/model",
        inputs=list(INPUTS),
        output="[{'type': 'double'}]",
    )


def with_new_version(resolved: list[ResolvedModel], index: int) -> list[ResolvedModel]:
    """The same fleet with model `index` on the next registry version (a new run)."""
    out = list(resolved)
    old = out[index]
    version = old.version + 1
    run_id = hashlib.sha256(f"{old.name}/{version}".encode()).hexdigest()[:32]
    out[index] = dataclasses.replace(
        old, version=version, model_uri=f"models:/{old.name}/{version}", run_id=run_id
    )
    return out
