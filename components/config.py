"""Typed stack configuration, read in one place.

Every `fleet:*` key of `Pulumi.<stack>.yaml` is read here into one frozen object; the
rest of the program takes that object and never touches `pulumi.Config`. Defaults live
here and only here. Secrets (registry password, MLflow token) stay `Output`s marked
secret, so they are encrypted in state and never appear in a manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pulumi

from fleet.errors import ConfigError
from fleet.host.images import DEFAULT_BASE_IMAGE

NAMESPACE = "fleet"
INGRESS_NAMESPACE = "ingress-nginx"
"""Default namespace of the ingress controller (`fleet:ingressNamespace`)."""
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A Kubernetes namespace name (RFC 1123 label)."""


@dataclass(frozen=True)
class IngressConfig:
    """How the router is exposed outside the cluster."""

    host: str
    """DNS name the Ingress answers (`models.example.com`)."""
    class_name: str = "nginx"
    """IngressClass of the controller that serves it."""
    tls_secret: str | None = None
    """Name of an existing `kubernetes.io/tls` Secret for `host`; no TLS when unset."""
    controller_namespace: str = INGRESS_NAMESPACE
    """Namespace of the ingress controller's pods (`fleet:ingressNamespace`): the router
    pods' NetworkPolicy lets them in, and (with Prometheus) no other namespace."""
    public_docs: bool = True
    """Whether the Ingress also serves the router's `/docs` and `/openapi.json`
    (`fleet:publicDocs`); the model and experiment routes are always served, `/metrics`
    never."""


@dataclass(frozen=True)
class RouterConfig:
    """The router's own Deployment."""

    image: str | None = None
    """A prebuilt router image; unset (the default) builds it like the model images."""
    replicas: int = 2
    """Router pods."""
    cpu: str = "250m"
    """CPU request of one router pod."""
    memory_mib: int = 256
    """Memory request and limit of one router pod."""


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for the image registry: used to push images and to pull them."""

    server: str
    """Registry host (`registry.example.com:5000`)."""
    username: str
    """Registry user."""
    password: pulumi.Output[str]
    """Registry password or token; a secret."""


@dataclass(frozen=True)
class StackConfig:
    """Everything one stack (dev, staging, production) decides."""

    stack: str
    """Stack name; part of the `app.kubernetes.io/instance` label."""
    namespace: str
    """Kubernetes namespace the fleet runs in (created with the restricted PSS label)."""
    models_file: str
    """Path of the fleet spec, relative to the project."""
    alias: str | None
    """MLflow alias every alias-picked model follows in this stack (`champion`)."""
    tracking_uri: str
    """MLflow tracking/registry URI the models are read from."""
    registry: str
    """Image name prefix (`localhost:5000/fleet`)."""
    base_image: str
    """Base image of the model images."""
    ca_bundle: str | None
    """Extra CA bundle (PEM path) trusted inside the images."""
    push: bool
    """Push images and deploy them by digest; false for a cluster sharing the local engine."""
    router: RouterConfig
    """The router Deployment."""
    ingress: IngressConfig
    """The router's Ingress."""
    registry_auth: RegistryAuth | None
    """Registry credentials; None for an open local registry."""
    mlflow_token: pulumi.Output[str] | None
    """MLflow token (secret) the image build reads models with."""
    mlflow_username: str | None = None
    """MLflow basic-auth user (`fleet:mlflowUsername`), instead of a token."""
    mlflow_password: pulumi.Output[str] | None = None
    """Its password (secret, `fleet:mlflowPassword`)."""
    profile_requests: int = 200
    """Random requests the profiler sends to each model image."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """Labels added to every Kubernetes object (team, cost centre)."""
    router_limits: dict[str, Any] = field(default_factory=dict)
    """`fleet:routerLimits`: fields of models.yaml's `router:` limits this stack overrides
    (validated with them, `fleet.spec.Fleet.with_router_limits`)."""
    prometheus_namespace: str | None = None
    """Namespace of the cluster's Prometheus: the model and router pods' NetworkPolicies
    let it in to scrape `/metrics`; None (the default) adds no such rule."""


def load_stack_config() -> StackConfig:
    """Read the current stack's `fleet:*` config; raises naming the missing key."""
    cfg = pulumi.Config("fleet")
    registry = cfg.require("registry")
    username = cfg.get("registryUsername")
    auth = None
    if username:
        auth = RegistryAuth(
            server=registry.split("/", 1)[0],
            username=username,
            password=cfg.require_secret("registryPassword"),
        )
    tracking_uri = cfg.require("trackingUri")
    remote = tracking_uri.startswith(("http://", "https://", "databricks"))
    mlflow_username = cfg.get("mlflowUsername")
    base_image = cfg.get("baseImage") or DEFAULT_BASE_IMAGE
    if "@sha256:" not in base_image and cfg.get_bool("push", True):
        # A tag can name other bytes on another runner, under the same content hash.
        pulumi.log.warn(
            f"fleet:baseImage {base_image} is a tag, not a digest: runners that made it "
            "themselves build different images under one hash. Push it with "
            "`scripts/base-image.sh TAG REGISTRY/base:bookworm` and set the digest it prints."
        )
    ingress: dict[str, Any] = cfg.get_object("ingress") or {}
    router: dict[str, Any] = cfg.get_object("router") or {}
    requests = cfg.get_int("profileRequests", 200)
    if requests < 1:
        raise ConfigError(f"fleet:profileRequests must be at least 1 (got {requests})")
    prometheus = cfg.get("prometheusNamespace") or None
    if prometheus is not None:
        _namespace_name(prometheus, "prometheusNamespace")
    ingress_namespace = _namespace_name(
        cfg.get("ingressNamespace") or INGRESS_NAMESPACE, "ingressNamespace"
    )
    return StackConfig(
        stack=pulumi.get_stack(),
        namespace=cfg.get("namespace") or NAMESPACE,
        models_file=cfg.get("modelsFile") or "models.yaml",
        alias=cfg.get("alias"),
        tracking_uri=tracking_uri,
        registry=registry,
        base_image=base_image,
        ca_bundle=cfg.get("caBundle"),
        push=cfg.get_bool("push", True),
        router=RouterConfig(
            image=router.get("image"),
            replicas=int(router.get("replicas", 2)),
            cpu=str(router.get("cpu", "250m")),
            memory_mib=int(router.get("memoryMib", 256)),
        ),
        ingress=IngressConfig(
            host=_required(ingress, "host", "ingress"),
            class_name=str(ingress.get("className", "nginx")),
            tls_secret=ingress.get("tlsSecret"),
            controller_namespace=ingress_namespace,
            public_docs=cfg.get_bool("publicDocs", True),
        ),
        registry_auth=auth,
        # A remote tracking server needs a token, or a user and password (basic auth); a
        # local sqlite registry has none.
        mlflow_token=(
            cfg.require_secret("mlflowToken")
            if remote and not mlflow_username
            else cfg.get_secret("mlflowToken")
        ),
        mlflow_username=mlflow_username,
        mlflow_password=cfg.require_secret("mlflowPassword") if mlflow_username else None,
        profile_requests=requests,
        extra_labels=dict(cfg.get_object("labels") or {}),
        router_limits=dict(cfg.get_object("routerLimits") or {}),
        prometheus_namespace=prometheus,
    )


def mlflow_credentials_for_reads() -> dict[str, str]:
    """The stack's MLflow credentials as plain text, for reading the registry at program
    time only (`token`, or `username` and `password`; empty when it has none).

    Resolution runs before any resource exists, so it cannot wait on an Output; the
    engine hands the decrypted values to the program anyway. They never enter a resource.
    """
    keys = {"token": "mlflowToken", "username": "mlflowUsername", "password": "mlflowPassword"}
    found = {k: pulumi.runtime.get_config(f"fleet:{key}") for k, key in keys.items()}
    return {k: str(v) for k, v in found.items() if v}


def _namespace_name(value: str, key: str) -> str:
    """`value` when it is a namespace name; else ConfigError naming `fleet:<key>`."""
    if not DNS_LABEL.fullmatch(value):
        raise ConfigError(f"fleet:{key} must be a namespace name (DNS label), not {value!r}")
    return value


def _required(obj: dict[str, Any], key: str, parent: str) -> str:
    value = obj.get(key)
    if not value:
        raise pulumi.ConfigMissingError(f"fleet:{parent}.{key}", False)
    return str(value)
