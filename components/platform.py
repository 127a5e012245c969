"""`Platform`: the namespace the fleet runs in, the registry pull Secret, and the
NetworkPolicies that fence in the model and router pods (`components.network`).

Every model and the router wait for the platform (`components.program.deploy_fleet`), so
the policies exist before the first pod of either starts."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import INGRESS_NAMESPACE, RegistryAuth
from components.network import Fences, network_policies
from components.pod import MANAGED_BY, PART_OF

PULL_SECRET = "fleet-registry"


@dataclass(frozen=True)
class PlatformArgs:
    """The namespace and registry access shared by every workload of the fleet."""

    namespace: str
    """Namespace to create; it enforces the restricted Pod Security Standard."""
    auth: RegistryAuth | None = None
    """Registry credentials; a pull Secret is made from them when set."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """Labels added to every object."""
    ingress_namespace: str = INGRESS_NAMESPACE
    """Namespace of the ingress controller, let in to the router pods."""
    prometheus_namespace: str | None = None
    """Namespace of the cluster's Prometheus, let in to the model and router pods (their
    `/metrics`); None: no such rule."""


def namespace_metadata(name: str, extra: dict[str, str]) -> dict[str, Any]:
    """Namespace metadata: the API server itself rejects pods that break restricted PSS."""
    pss = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    base = {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": MANAGED_BY}
    return {"name": name, "labels": {**extra, **base, **pss}}


def docker_config(server: str, username: str, password: str) -> str:
    """The `.dockerconfigjson` of a pull Secret."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {server: {"username": username, "auth": token}}})


class Platform(pulumi.ComponentResource):
    """What every model and the router need before they start."""

    pull_secrets: list[str]

    def __init__(
        self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleet:index:Platform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta: Any = namespace_metadata(args.namespace, args.extra_labels)
        ns = k8s.core.v1.Namespace(f"{name}-namespace", metadata=meta, opts=child)
        self.pull_secrets = []
        auth = args.auth
        if auth is not None:
            server, user = auth.server, auth.username
            # The password Output is secret, so is this: encrypted in state, never plain.
            payload = auth.password.apply(lambda pw: docker_config(server, user, pw))
            k8s.core.v1.Secret(
                f"{name}-pull-secret",
                metadata={
                    "name": PULL_SECRET,
                    # The Namespace's own output: the Secret is created once it exists.
                    "namespace": ns.metadata.name,
                    "labels": {"app.kubernetes.io/part-of": PART_OF, **args.extra_labels},
                },
                type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": payload},
                opts=child,
            )
            self.pull_secrets = [PULL_SECRET]
        fences = Fences(
            namespace=args.namespace,
            ingress_namespace=args.ingress_namespace,
            prometheus_namespace=args.prometheus_namespace,
            extra_labels=args.extra_labels,
        )
        for suffix, pol in network_policies(fences).items():
            # In the Namespace's own output, as the Secret: created once it exists.
            meta = {**pol["metadata"], "namespace": ns.metadata.name}
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{suffix}", metadata=meta, spec=pol["spec"], opts=child
            )
        self.register_outputs({"namespace": args.namespace, "pull_secrets": self.pull_secrets})
