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
from components.pack import Pack, PackArgs, PackMember
from components.platform import Platform, PlatformArgs
from components.router import Router, RouterArgs
from fleet.host.images import BuildSettings
from fleet.host.registry import Registry
from fleet.packing import Placement, PlacementFile, place_fleet, placement_path, read_placement
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from fleet.specfile import load_fleet


@dataclass(frozen=True)
class FleetDeployment:
    """The components of one stack."""

    platform: Platform
    services: dict[str, ModelService]
    """By model name."""
    router: Router
    packs: dict[str, Pack]
    """By pack name; empty unless `packing.enabled`."""
    placement: Placement
    """Which pack serves each packed model."""


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


def load_placement(cfg: StackConfig, fleet: Fleet) -> PlacementFile:
    """The placement file beside `cfg.models_file` (`fleet place` writes it); empty when
    packing is off or there is none yet."""
    if not fleet.packing.enabled:
        return PlacementFile()
    return read_placement(placement_path(cfg.models_file, fleet.packing))


def placement_of(fleet: Fleet, models: list[ResolvedModel], placed: PlacementFile) -> Placement:
    """The packs of the packed models (`fleet.packing.place_fleet`); warns about models
    placed by an estimate and logs what moves."""
    placement, unmeasured = place_fleet(fleet, models, placed)
    if unmeasured:
        pulumi.log.warn(
            f"{len(unmeasured)} packed model(s) have no measurement in "
            f"{fleet.packing.placement_file} and are placed by the largest measured size "
            f"({', '.join(unmeasured[:5])}{', ...' if len(unmeasured) > 5 else ''}): run "
            "`fleet place` and commit the file"
        )
    for model, (was, now) in placement.moved(placed.placement).items():
        if was is not None and now is not None:
            pulumi.log.info(f"model '{model}' moves from {was} to {now} (its pack is full)")
    return placement


def deploy_fleet(
    cfg: StackConfig,
    fleet: Fleet,
    models: list[ResolvedModel],
    placed: PlacementFile | None = None,
) -> FleetDeployment:
    """Every component of the stack: the platform (namespace, pull Secret,
    NetworkPolicies), one ModelService per model, one Pack per pack of packed models
    (placed by `placed`, the placement file), the router."""
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
    placement = placement_of(fleet, models, placed or PlacementFile())
    pack_of = placement.pack_of()
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
                pack=pack_of.get(r.name),
            ),
            after_platform,
        )
        for r in models
    }
    packs = {
        pack: Pack(
            pack,
            PackArgs(
                members=[_member(services[m]) for m in members],
                namespace=cfg.namespace,
                packing=fleet.packing,
                policy=fleet.defaults.memory,
                build=build,
                push=cfg.push,
                auth=cfg.registry_auth,
                image_pull_secrets=platform.pull_secrets,
                extra_labels=cfg.extra_labels,
            ),
            after_platform,
        )
        for pack, members in placement.packs.items()
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
            routes_after=[*services.values(), *packs.values()],
            backends={m: services[m].url for m in pack_of},
        ),
        after_platform,
    )
    return FleetDeployment(platform, services, router, packs, placement)


def _member(svc: ModelService) -> PackMember:
    if svc.profile is None:
        raise ValueError(f"model '{svc.resolved.name}' is packed but has no profile")
    return PackMember(svc.resolved, svc.image.image, svc.image.planned_hash, svc.profile)


def model_outputs(deployment: FleetDeployment) -> dict[str, Any]:
    """Per model: version, image (by digest), and its memory request or its pack, for
    `pulumi stack output`."""
    pack_of = deployment.placement.pack_of()
    out: dict[str, Any] = {}
    for name, svc in deployment.services.items():
        out[name] = {"version": svc.version, "image": svc.image.image}
        if name in pack_of:
            out[name]["pack"] = pack_of[name]
        else:
            out[name]["memory_request_mib"] = svc.memory_request_mib
    return out


def pack_outputs(deployment: FleetDeployment) -> dict[str, Any]:
    """Per pack: its models, image and memory request, for `pulumi stack output`."""
    return {
        name: {
            "models": list(deployment.placement.packs[name]),
            "image": pack.image.image,
            "memory_request_mib": pack.memory_request_mib,
        }
        for name, pack in deployment.packs.items()
    }
