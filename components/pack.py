"""`Pack`: one shared model server for many small models: image, Deployment, Service, PDB.

The models' own components (`ModelService` with `pack` set) still own each model's image
and memory profile; the pack stacks their images (`PackImage`) and sizes its pods from
their profiles: the largest baseline plus every model's marginal, under the fleet's
memory policy (`fleet.packing.pack_memory`). Should the measured models no longer fit
`packing.memory_budget_mib` (a new version grew), the update stops before the pack's
Deployment changes and says to run `fleet place`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import RegistryAuth
from components.manifests import MODEL_COMPONENT, MODEL_PORT, backend_url
from components.pack_image import PackImage, PackImageArgs, PackMemberArgs
from components.pod import (
    ANNOTATION,
    PodParams,
    Text,
    deployment_spec,
    labels,
    mib,
    pod_spec,
    selector,
)
from components.profile import PACK_NUMBERS, MemoryProfile
from fleet.host.images import BuildSettings
from fleet.host.model_server import pack_path
from fleet.packing import PackSize, PlacementError, pack_memory
from fleet.resolved import ResolvedModel
from fleet.spec import MemoryPolicy, Packing


@dataclass(frozen=True)
class PackMember:
    """A model of the pack, with the image and profile its ModelService made."""

    resolved: ResolvedModel
    image: pulumi.Input[str]
    content_hash: str
    profile: MemoryProfile


@dataclass(frozen=True)
class PackArgs:
    """Everything one pack's deployment is made from."""

    members: list[PackMember]
    namespace: str
    packing: Packing
    """The fleet's `packing:` (replicas, cpu, budget)."""
    policy: MemoryPolicy
    """The fleet's memory policy (`defaults.memory`), applied to the pack's sums."""
    build: BuildSettings
    push: bool = True
    auth: RegistryAuth | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    extra_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PackObjects:
    """What a pack's Kubernetes objects are made from (plain, but for image and memory)."""

    name: str
    namespace: str
    models: list[tuple[str, int]]
    """(model name, version) of every member."""
    content_hash: str
    replicas: int
    cpu: str
    image: Text
    memory_request: Text
    memory_limit: Text
    image_pull_secrets: list[str] = field(default_factory=list)
    extra_labels: dict[str, str] = field(default_factory=dict)


def pack_labels(p: PackObjects) -> dict[str, str]:
    return labels(MODEL_COMPONENT, p.name, "pack", p.content_hash[:16], p.extra_labels)


def pack_annotations(p: PackObjects) -> dict[str, Text]:
    """Which models (and versions) the pack's pods serve, and the pack image's hash."""
    return {
        f"{ANNOTATION}/models": ",".join(f"{m}@{v}" for m, v in sorted(p.models)),
        f"{ANNOTATION}/content-hash": p.content_hash,
    }


def _metadata(p: PackObjects, annotations: bool = False) -> dict[str, Any]:
    labels = pack_labels(p)
    if not annotations:
        # The Service and PDB stay as they are while the pack's models change: only the
        # Deployment (and its pods) carries the pack image's version.
        del labels["app.kubernetes.io/version"]
    meta: dict[str, Any] = {"name": p.name, "namespace": p.namespace, "labels": labels}
    if annotations:
        meta["annotations"] = pack_annotations(p)
    return meta


def pack_deployment(p: PackObjects) -> dict[str, Any]:
    pod = pod_spec(
        PodParams(
            container="model-server",
            image=p.image,
            port=MODEL_PORT,
            cpu=p.cpu,
            memory_request=p.memory_request,
            memory_limit=p.memory_limit,
            # /readyz answers once every model of the pack is loaded.
            scratch={"tmp": "/tmp"},
            image_pull_secrets=p.image_pull_secrets,
        )
    )
    match = selector(MODEL_COMPONENT, p.name)
    spec = deployment_spec(match, pack_labels(p), pack_annotations(p), pod, p.replicas)
    return {"metadata": _metadata(p, annotations=True), "spec": spec}


def pack_service(p: PackObjects) -> dict[str, Any]:
    spec = {
        "type": "ClusterIP",
        "selector": selector(MODEL_COMPONENT, p.name),
        "ports": [{"name": "http", "port": MODEL_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    return {"metadata": _metadata(p), "spec": spec}


def pack_pdb(p: PackObjects) -> dict[str, Any] | None:
    """One pod down at a time, when the pack runs more than one."""
    if p.replicas <= 1:
        return None
    spec = {"maxUnavailable": 1, "selector": {"matchLabels": selector(MODEL_COMPONENT, p.name)}}
    return {"metadata": _metadata(p), "spec": spec}


def member_url(pack: str, namespace: str, model: str) -> str:
    """In-cluster URL of a packed model, for the router's routes config."""
    return backend_url(pack, namespace) + pack_path(model)


def sized(
    pack: str, names: list[str], numbers: list[list[float]], packing: Packing, policy: MemoryPolicy
) -> tuple[int, int]:
    """(request, limit) MiB of the pack from its members' measured pack numbers; raises
    PlacementError when they no longer fit the budget."""
    sizes = [
        PackSize(float(b95), float(bpk), float(m95), float(mpk)) for b95, bpk, m95, mpk in numbers
    ]
    mem = pack_memory(sizes, policy, packing.min_marginal_mib)
    if mem.limit_mib > packing.memory_budget_mib:
        raise PlacementError(
            f"pack '{pack}': its models now measure {mem.limit_mib} MiB (limit) against "
            f"packing.memory_budget_mib {packing.memory_budget_mib}: run `fleet place` and "
            f"commit {packing.placement_file}, which moves models out of it "
            f"({', '.join(sorted(names))})"
        )
    return mem.request_mib, mem.limit_mib


class Pack(pulumi.ComponentResource):
    """A pack image, and the Deployment, Service and PDB that serve its models."""

    image: PackImage
    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service
    memory_request_mib: pulumi.Output[int]
    url: str

    def __init__(
        self, name: str, args: PackArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleet:index:Pack", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        members = sorted(args.members, key=lambda m: m.resolved.name)
        self.image = PackImage(
            f"{name}-image",
            PackImageArgs(
                pack=name,
                members=[PackMemberArgs(m.resolved, m.image, m.content_hash) for m in members],
                build=args.build,
                push=args.push,
                auth=args.auth,
            ),
            child,
        )
        names = [m.resolved.name for m in members]
        numbers = pulumi.Output.all(
            *[pulumi.Output.all(*[getattr(m.profile, k) for k in PACK_NUMBERS]) for m in members]
        )
        memory = numbers.apply(lambda rows: sized(name, names, rows, args.packing, args.policy))
        request = memory.apply(lambda rl: rl[0])
        limit = memory.apply(lambda rl: rl[1])
        objects = PackObjects(
            name=name,
            namespace=args.namespace,
            models=[(m.resolved.name, m.resolved.version) for m in members],
            content_hash=self.image.planned_hash,
            replicas=args.packing.replicas,
            cpu=args.packing.cpu,
            image=self.image.image,
            memory_request=request.apply(mib),
            memory_limit=limit.apply(mib),
            image_pull_secrets=args.image_pull_secrets,
            extra_labels=args.extra_labels,
        )
        dep = pack_deployment(objects)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment", metadata=dep["metadata"], spec=dep["spec"], opts=child
        )
        svc = pack_service(objects)
        self.service = k8s.core.v1.Service(
            f"{name}-service", metadata=svc["metadata"], spec=svc["spec"], opts=child
        )
        pdb = pack_pdb(objects)
        if pdb is not None:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb", metadata=pdb["metadata"], spec=pdb["spec"], opts=child
            )
        self.memory_request_mib = request
        self.url = backend_url(name, args.namespace)
        self.register_outputs(
            {
                "image": self.image.image,
                "models": names,
                "memory_request_mib": request,
                "memory_limit_mib": limit,
                "url": self.url,
            }
        )
