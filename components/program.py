"""The program's steps as functions, so tests can run them on models they resolved.

`__main__.py` calls these in order; graph tests call `deploy_fleet` with a fleet and
resolved models of their own (the demo registry, or a generated fleet of hundreds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from components.config import StackConfig, mlflow_credentials_for_reads
from components.model_service import ModelService, ModelServiceArgs
from components.platform import Platform, PlatformArgs
from components.router import Router, RouterArgs
from fleet.host.images import BuildSettings
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from fleet.specfile import load_fleet


@dataclass(frozen=True)
class FleetDeployment:
    """The components of one stack."""

    platform: Platform
    services: dict[str, ModelService]
    """By MLflow model name."""
    router: Router


def build_settings(cfg: StackConfig) -> BuildSettings:
    return BuildSettings(
        registry=cfg.registry,
        base_image=cfg.base_image,
        ca_bundle=Path(cfg.ca_bundle) if cfg.ca_bundle else None,
    )


def load_models(cfg: StackConfig) -> tuple[Fleet, list[ResolvedModel]]:
    """The fleet of `cfg.models_file` on the stack's alias, resolved against the registry.

    Reading the registry is the one thing the program does at program time.
    """
    fleet = load_fleet(cfg.models_file).with_alias(cfg.alias)
    fleet = fleet.with_router_limits(cfg.router_limits, name_of=lambda f: f"fleet:routerLimits.{f}")
    registry = Registry.from_environment(cfg.tracking_uri)
    if not registry.has_credentials():
        # A job's own (read-only) credentials win over the stack's; else the stack's token.
        registry = registry.with_credentials(**mlflow_credentials_for_reads())
    return fleet, registry.resolve(fleet)


def deploy_fleet(cfg: StackConfig, fleet: Fleet, models: list[ResolvedModel]) -> FleetDeployment:
    """Every component of the stack: the platform (namespace, pull Secret,
    NetworkPolicies), one ModelService per model, the router."""
    platform = Platform(
        "platform",
        PlatformArgs(
            namespace=cfg.namespace,
            auth=cfg.registry_auth,
            extra_labels=cfg.extra_labels,
            ingress_namespace=cfg.ingress.controller_namespace,
            prometheus_namespace=cfg.prometheus_namespace,
        ),
    )
    # Every model and the router wait for the whole platform (a component stands for its
    # children): the namespace, the pull Secret and the NetworkPolicies exist before any
    # of their pods.
    after_platform = pulumi.ResourceOptions(depends_on=[platform])
    build = build_settings(cfg)
    services = {
        r.name: ModelService(
            r.model.k8s_name,
            ModelServiceArgs(
                resolved=r,
                namespace=cfg.namespace,
                build=build,
                tracking_uri=cfg.tracking_uri,
                push=cfg.push,
                auth=cfg.registry_auth,
                mlflow_token=cfg.mlflow_token,
                mlflow_username=cfg.mlflow_username,
                mlflow_password=cfg.mlflow_password,
                image_pull_secrets=platform.pull_secrets,
                profile_requests=cfg.profile_requests,
                extra_labels=cfg.extra_labels,
            ),
            after_platform,
        )
        for r in models
    }
    router = Router(
        "router",
        RouterArgs(
            fleet=fleet,
            models=models,
            namespace=cfg.namespace,
            ingress=cfg.ingress,
            image=cfg.router.image,
            build=build,
            push=cfg.push,
            auth=cfg.registry_auth,
            replicas=cfg.router.replicas,
            cpu=cfg.router.cpu,
            memory_mib=cfg.router.memory_mib,
            image_pull_secrets=platform.pull_secrets,
            extra_labels=cfg.extra_labels,
            # Routes name model versions: they move once the models have rolled out. The
            # rest of the router (its image above all) does not wait for the models.
            routes_after=list(services.values()),
        ),
        after_platform,
    )
    return FleetDeployment(platform=platform, services=services, router=router)


def model_outputs(deployment: FleetDeployment) -> dict[str, Any]:
    """Per model: version, image (by digest) and memory request, for `pulumi stack output`."""
    return {
        name: {
            "version": svc.version,
            "image": svc.image.image,
            "memory_request_mib": svc.memory_request_mib,
        }
        for name, svc in deployment.services.items()
    }
