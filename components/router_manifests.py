"""Pure builders for the router's Kubernetes objects and the model NetworkPolicy."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from components.config import IngressConfig
from components.manifests import MODEL_COMPONENT, MODEL_PORT
from components.pod import (
    PART_OF,
    PodParams,
    Text,
    deployment_spec,
    labels,
    mib,
    pod_spec,
    selector,
)

ROUTER_NAME = "fleet-router"
ROUTER_COMPONENT = "router"
ROUTER_PORT = 8080
CONFIG_DIR = "/etc/fleet"
CONFIG_FILE = "routes.json"
ROUTES_VOLUME = "routes"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Label the API server sets on every namespace to its own name."""


@dataclass(frozen=True)
class RouterObjects:
    """What the router's Kubernetes objects are made from."""

    namespace: str
    """Namespace the router runs in (the models' namespace)."""
    image: Text
    """Router image, by digest where known."""
    version: str
    """Router version for the `app.kubernetes.io/version` label (its image's tag or hash)."""
    routes_json: str
    """The routes config, serialised (`fleet.routes.build_routes_config`)."""
    ingress: IngressConfig
    """Ingress class, host and TLS Secret."""
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
    prometheus_namespace: str | None = None
    """Namespace of the cluster's Prometheus, let in to scrape the model pods; None: no
    such rule."""


def routes_json(config: dict[str, Any]) -> str:
    """Canonical JSON of the routes config: the same config always gives the same bytes."""
    return json.dumps(config, sort_keys=True, indent=1)


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def label_value(text: str) -> str:
    """`text` cut to a valid label value (63 chars of [A-Za-z0-9._-], alphanumeric ends)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63].strip("-._") or "unknown"


def image_version(image: str) -> str:
    """The tag of `image` (`router:0.1.0` -> `0.1.0`), else the start of its digest."""
    name, _, digest = image.partition("@")
    tail = name.rsplit("/", 1)[-1]
    if ":" in tail:
        return label_value(tail.split(":", 1)[1])
    return label_value(digest.removeprefix("sha256:")[:12]) if digest else "latest"


def router_labels(r: RouterObjects) -> dict[str, str]:
    return labels(ROUTER_COMPONENT, ROUTER_NAME, "router", label_value(r.version), r.extra_labels)


def _metadata(r: RouterObjects, name: str = ROUTER_NAME) -> dict[str, Any]:
    return {"name": name, "namespace": r.namespace, "labels": router_labels(r)}


def routes_configmap_name(routes: str) -> str:
    """The routes ConfigMap's name: it carries a hash of the routes, so new routes are a
    new ConfigMap and the router Deployment that mounts it by name rolls."""
    return f"{ROUTER_NAME}-routes-{checksum(routes)[:10]}"


def routes_configmap(r: RouterObjects) -> dict[str, Any]:
    """The routes config as an immutable, content-named ConfigMap.

    Immutable: a running router's routes never change under it, and the kubelet does not
    watch the object. A change of routes is a new object (its name is their hash), which
    Pulumi creates before the Deployment moves to it and deletes the old one after.
    """
    name = routes_configmap_name(r.routes_json)
    return {"metadata": _metadata(r, name), "immutable": True, "data": {CONFIG_FILE: r.routes_json}}


def router_deployment(r: RouterObjects, routes_configmap: Text) -> dict[str, Any]:
    """The router Deployment, mounting the ConfigMap named `routes_configmap`.

    The component passes the ConfigMap resource's own `metadata.name` output, so the
    Deployment waits for that ConfigMap and rolls whenever the routes, and so the
    name, change.
    """
    pod = pod_spec(
        PodParams(
            container="router",
            image=r.image,
            port=ROUTER_PORT,
            cpu=r.cpu,
            memory_request=mib(r.memory_mib),
            memory_limit=mib(r.memory_mib),
            command=["/usr/bin/python3", "-m", "fleet.router"],
            args=[
                "--config",
                f"{CONFIG_DIR}/{CONFIG_FILE}",
                "--host",
                "0.0.0.0",
                "--port",
                str(ROUTER_PORT),
            ],
            liveness_path="/healthz",
            image_pull_secrets=r.image_pull_secrets,
        )
    )
    # Mounted here rather than through PodParams.config_maps, whose names are plain
    # strings: this name may be an Output still unknown at program time.
    pod["volumes"].append({"name": ROUTES_VOLUME, "configMap": {"name": routes_configmap}})
    mount = {"name": ROUTES_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}
    pod["containers"][0]["volumeMounts"].append(mount)
    match = selector(ROUTER_COMPONENT, ROUTER_NAME)
    spec = deployment_spec(match, router_labels(r), {}, pod, r.replicas)
    return {"metadata": _metadata(r), "spec": spec}


def router_service(r: RouterObjects) -> dict[str, Any]:
    spec = {
        "type": "ClusterIP",
        "selector": selector(ROUTER_COMPONENT, ROUTER_NAME),
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    }
    return {"metadata": _metadata(r), "spec": spec}


def router_pdb(r: RouterObjects) -> dict[str, Any] | None:
    if r.replicas <= 1:
        return None
    spec = {
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector(ROUTER_COMPONENT, ROUTER_NAME)},
    }
    return {"metadata": _metadata(r), "spec": spec}


def router_ingress(r: RouterObjects) -> dict[str, Any]:
    backend = {"service": {"name": ROUTER_NAME, "port": {"name": "http"}}}
    spec: dict[str, Any] = {
        "ingressClassName": r.ingress.class_name,
        "rules": [
            {
                "host": r.ingress.host,
                "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
            }
        ],
    }
    if r.ingress.tls_secret:
        spec["tls"] = [{"hosts": [r.ingress.host], "secretName": r.ingress.tls_secret}]
    return {"metadata": _metadata(r), "spec": spec}


def router_url(ingress: IngressConfig) -> str:
    scheme = "https" if ingress.tls_secret else "http"
    return f"{scheme}://{ingress.host}"


def models_network_policy(r: RouterObjects) -> dict[str, Any]:
    """Model pods accept traffic only from router pods, and only on the model port; with
    `prometheus_namespace` set, also from pods of that namespace, to scrape `/metrics`.

    A NetworkPolicy admits ports, not paths: `/metrics` is served on the model port, so
    Prometheus's namespace is let in to that port.
    """
    models = {"app.kubernetes.io/name": MODEL_COMPONENT, "app.kubernetes.io/part-of": PART_OF}
    router = {"podSelector": {"matchLabels": selector(ROUTER_COMPONENT, ROUTER_NAME)}}
    rules: list[dict[str, Any]] = [{"from": [router], "ports": _model_port()}]
    if r.prometheus_namespace:
        prometheus = {"matchLabels": {NAMESPACE_NAME_LABEL: r.prometheus_namespace}}
        rules.append({"from": [{"namespaceSelector": prometheus}], "ports": _model_port()})
    spec = {"podSelector": {"matchLabels": models}, "policyTypes": ["Ingress"], "ingress": rules}
    return {"metadata": _metadata(r, "fleet-models-from-router"), "spec": spec}


def _model_port() -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": MODEL_PORT}]
