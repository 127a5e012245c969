"""`Router`: the routes ConfigMap, the router Deployment, its Service and its Ingress,
which publishes the routes (and, with `fleet:publicDocs`, the API docs) and nothing else.

Only the routes ConfigMap and the Deployment that serves them wait for the models
(`RouterArgs.routes_after`): routes name model versions, so they move once those serve.
The router image, Service and Ingress wait for nothing of the models: the image builds
while the models build. The NetworkPolicies (router's and models') are the Platform's,
so they exist before any model or router pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import IngressConfig, RegistryAuth
from components.manifests import backend_url
from components.pod import Text
from components.router_image import RouterImage, RouterImageArgs
from components.router_manifests import (
    RouterObjects,
    checksum,
    image_version,
    router_deployment,
    router_ingress,
    router_pdb,
    router_service,
    router_url,
    routes_configmap,
    routes_json,
)
from fleet.host.images import BuildSettings
from fleet.resolved import ResolvedModel
from fleet.routes import build_routes_config
from fleet.spec import Fleet


@dataclass(frozen=True)
class RouterArgs:
    """What the router is made from."""

    fleet: Fleet
    """The fleet spec (experiments and their weights)."""
    models: list[ResolvedModel]
    """The resolved models it routes to (versions and signatures)."""
    namespace: str
    """Namespace of the router and the model Services."""
    ingress: IngressConfig
    """Ingress class, host, TLS Secret and whether the API docs are public."""
    build: BuildSettings | None = None
    """Build the router image with these settings (the model images' ones)..."""
    image: str | None = None
    """... or run this prebuilt router image instead."""
    push: bool = True
    """Push the built image and deploy it by digest."""
    auth: RegistryAuth | None = None
    """Registry credentials for the push."""
    replicas: int = 2
    """Router pods."""
    cpu: str = "250m"
    """CPU request of one pod."""
    memory_mib: int = 256
    """Memory request and limit of one pod."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Registry Secrets to pull with."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """Labels added to every object."""
    routes_after: Sequence[pulumi.Resource] = ()
    """What the routes ConfigMap and the router Deployment wait for: every model's
    ModelService and every Pack, so the routes never name a version before its pods and
    Service exist."""
    backends: dict[str, str] = field(default_factory=dict)
    """Model name -> its server's URL where it is not the model's own Service (a packed
    model's, in its pack: `components.pack.member_url`)."""


class Router(pulumi.ComponentResource):
    """The fleet's one entry point: routes, A/B variants and input validation."""

    config: dict[str, Any]
    config_checksum: str
    url: str

    def __init__(
        self, name: str, args: RouterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleet:index:Router", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        self.config = build_routes_config(
            args.fleet,
            args.models,
            lambda r: args.backends.get(r.name) or backend_url(r.model.k8s_name, ns),
        )
        image: Text
        if args.image is not None:
            image, version = args.image, image_version(args.image)
        elif args.build is not None:
            built = RouterImage(
                f"{name}-image", RouterImageArgs(args.build, args.push, args.auth), child
            )
            image, version = built.image, built.planned_hash[:12]
        else:
            raise ValueError(f"router '{name}': give a router image or build settings")
        objects = RouterObjects(
            namespace=ns,
            image=image,
            version=version,
            routes_json=routes_json(self.config),
            ingress=args.ingress,
            replicas=args.replicas,
            cpu=args.cpu,
            memory_mib=args.memory_mib,
            image_pull_secrets=args.image_pull_secrets,
            extra_labels=args.extra_labels,
        )
        self.config_checksum = checksum(objects.routes_json)
        after_models = pulumi.ResourceOptions(parent=self, depends_on=list(args.routes_after))
        cm = routes_configmap(objects)
        routes = k8s.core.v1.ConfigMap(
            f"{name}-routes",
            metadata=cm["metadata"],
            immutable=cm["immutable"],
            data=cm["data"],
            opts=after_models,
        )
        # By the ConfigMap's own output: the Deployment waits for it and rolls with its name.
        dep = router_deployment(objects, routes.metadata.name)
        k8s.apps.v1.Deployment(
            f"{name}-deployment", metadata=dep["metadata"], spec=dep["spec"], opts=after_models
        )
        svc = router_service(objects)
        k8s.core.v1.Service(
            f"{name}-service", metadata=svc["metadata"], spec=svc["spec"], opts=child
        )
        pdb = router_pdb(objects)
        if pdb is not None:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb", metadata=pdb["metadata"], spec=pdb["spec"], opts=child
            )
        ing = router_ingress(objects)
        k8s.networking.v1.Ingress(
            f"{name}-ingress", metadata=ing["metadata"], spec=ing["spec"], opts=child
        )
        self.url = router_url(args.ingress)
        self.register_outputs(
            {"url": self.url, "routes_checksum": self.config_checksum, "routes": len(args.models)}
        )
