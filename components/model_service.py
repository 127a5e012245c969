"""`ModelService`: one model of the fleet, from image to Service."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from components.config import RegistryAuth
from components.image import ModelImage, ModelImageArgs
from components.manifests import (
    ModelObjects,
    backend_url,
    model_deployment,
    model_hpa,
    model_pdb,
    model_service,
)
from components.pack import member_url
from components.pod import Text, mib
from components.profile import MemoryProfile, MemoryProfileArgs
from fleet.host.images import BuildSettings
from fleet.resolved import ResolvedModel


@dataclass(frozen=True)
class ModelServiceArgs:
    """Everything one model's deployment is made from."""

    resolved: ResolvedModel
    """The model pinned to a registry version, with its effective settings."""
    namespace: str
    """Namespace to deploy into."""
    build: BuildSettings
    """How the model image is built (registry, base image, CA bundle)."""
    tracking_uri: str
    """MLflow URI the image build reads the model from."""
    push: bool = True
    """Push the image and deploy it by digest."""
    auth: RegistryAuth | None = None
    """Registry credentials: the image build pushes with them, the memory profile pulls
    with them on a runner that does not have the image."""
    mlflow_token: pulumi.Output[str] | None = None
    """MLflow token for the build (secret)."""
    mlflow_username: str | None = None
    """MLflow basic-auth user for the build, instead of a token."""
    mlflow_password: pulumi.Output[str] | None = None
    """Its password (secret)."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Registry Secrets the pods pull with."""
    profile_requests: int = 200
    """Requests the memory profiler sends."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """Labels added to every object."""
    pack: str | None = None
    """The pack that serves the model (`fleet.packing`); None for pods of its own."""


class ModelService(pulumi.ComponentResource):
    """A model image, its memory profile, and its Deployment, Service, PDB and HPA; for a
    packed model, the image and profile only (its `Pack` serves it)."""

    image: ModelImage
    profile: MemoryProfile | None
    deployment: k8s.apps.v1.Deployment | None
    service: k8s.core.v1.Service | None
    memory_request_mib: pulumi.Output[int] | None
    version: int
    url: str

    def __init__(
        self, name: str, args: ModelServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleet:index:ModelService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        resolved = args.resolved
        self.resolved = resolved
        self.image = ModelImage(
            f"{name}-image",
            ModelImageArgs(
                resolved=resolved,
                build=args.build,
                tracking_uri=args.tracking_uri,
                push=args.push,
                auth=args.auth,
                mlflow_token=args.mlflow_token,
                mlflow_username=args.mlflow_username,
                mlflow_password=args.mlflow_password,
            ),
            child,
        )
        fixed = resolved.model.settings.memory.fixed_mib
        self.version = resolved.version
        request: pulumi.Output[int]
        limit: pulumi.Output[int]
        profile_args = MemoryProfileArgs(
            resolved=resolved,
            image=self.image.image,
            content_hash=self.image.content_hash,
            requests=args.profile_requests,
            auth=args.auth,
            # A packed model is measured for its pack too: what it adds there, and the
            # server's own baseline.
            pack=args.pack is not None,
        )
        if args.pack is not None:
            self.profile = MemoryProfile(f"{name}-profile", profile_args, child)
            self.deployment = self.service = None
            self.memory_request_mib = None
            self.url = member_url(args.pack, args.namespace, resolved.name)
            self.register_outputs(
                {
                    "image": self.image.image,
                    "pack": args.pack,
                    "marginal_p95_mib": self.profile.marginal_p95_mib,
                    "version": resolved.version,
                    "url": self.url,
                }
            )
            return
        if fixed is not None:
            # Fixed memory in models.yaml: nothing to measure.
            self.profile = None
            request = limit = pulumi.Output.from_input(fixed)
        else:
            self.profile = MemoryProfile(f"{name}-profile", profile_args, child)
            request, limit = self.profile.request_mib, self.profile.limit_mib
        objects = ModelObjects(
            k8s_name=resolved.model.k8s_name,
            namespace=args.namespace,
            model_name=resolved.name,
            version=resolved.version,
            run_id=resolved.run_id,
            model_uri=resolved.model_uri,
            content_hash=self.image.planned_hash,
            settings=resolved.model.settings,
            image=self.image.image,
            memory_request=_quantity(request),
            memory_limit=_quantity(limit),
            image_pull_secrets=args.image_pull_secrets,
            extra_labels=args.extra_labels,
        )
        dep = model_deployment(objects)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment", metadata=dep["metadata"], spec=dep["spec"], opts=child
        )
        svc = model_service(objects)
        self.service = k8s.core.v1.Service(
            f"{name}-service", metadata=svc["metadata"], spec=svc["spec"], opts=child
        )
        pdb = model_pdb(objects)
        if pdb is not None:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb", metadata=pdb["metadata"], spec=pdb["spec"], opts=child
            )
        hpa = model_hpa(objects)
        if hpa is not None:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{name}-hpa", metadata=hpa["metadata"], spec=hpa["spec"], opts=child
            )
        self.memory_request_mib = request
        self.url = backend_url(resolved.model.k8s_name, args.namespace)
        self.register_outputs(
            {
                "image": self.image.image,
                "memory_request_mib": request,
                "memory_limit_mib": limit,
                "version": resolved.version,
                "url": self.url,
            }
        )


def _quantity(value: pulumi.Output[int]) -> Text:
    return value.apply(mib)
