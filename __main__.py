"""model-fleet: every model of models.yaml as its own service, behind one router.

Reads like a table of contents; each step lives in `components/`:
  1. the stack's typed config (components/config.py),
  2. the fleet spec on the stack's alias, resolved against the MLflow registry
     (the only thing done at program time: previews stay reads),
  3. per model a ModelService (image -> memory profile -> Deployment, Service, PDB, HPA);
     with packing, small models share Packs (their images stacked, sized by their
     measured marginal memory, placed by placement.yaml); the Router (routes ConfigMap,
     Deployment, Service, Ingress),
  4. outputs: the router URL and, per model, version, image digest and memory.
Building, pushing and profiling happen inside resources during `pulumi up`, and only
for models whose content hash changed. A problem a person must fix (a bad models.yaml,
a model missing from the registry, bad stack config) ends the program with its problems
listed, not a traceback.
"""

import pulumi

from components.config import load_stack_config
from components.program import (
    deploy_fleet,
    load_models,
    load_placement,
    model_outputs,
    pack_outputs,
)
from fleet.errors import FleetError

try:
    # 1. Stack config: dev, staging (alias challenger) and production (alias champion).
    config = load_stack_config()
    # 2. The fleet, pinned to registry versions.
    fleet, models = load_models(config)
    # Which pack each packed model runs in (`fleet place` writes the file).
    placed = load_placement(config, fleet)
except FleetError as exc:
    raise pulumi.RunError(
        f"{len(exc.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in exc.problems)
    ) from None

# 3. Platform (namespace, pull secret, NetworkPolicies), one ModelService per model, the Router.
try:
    deployment = deploy_fleet(config, fleet, models, placed)
except FleetError as exc:  # a model too big for any pack
    raise pulumi.RunError("\n".join(exc.problems)) from None

# 4. What a person or the next pipeline step needs.
pulumi.export("router_url", deployment.router.url)
pulumi.export("routes_checksum", deployment.router.config_checksum)
pulumi.export("namespace", config.namespace)
pulumi.export("models", model_outputs(deployment))
pulumi.export("packs", pack_outputs(deployment))
