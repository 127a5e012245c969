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
    ANNOTATION,
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
CHECKSUM = f"{ANNOTATION}/routes-checksum"


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


def routes_configmap(r: RouterObjects) -> dict[str, Any]:
    return {"metadata": _metadata(r, f"{ROUTER_NAME}-routes"), "data": {CONFIG_FILE: r.routes_json}}


def router_deployment(r: RouterObjects) -> dict[str, Any]:
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
            config_maps={"routes": (f"{ROUTER_NAME}-routes", CONFIG_DIR)},
            liveness_path="/healthz",
            image_pull_secrets=r.image_pull_secrets,
        )
    )
    # The checksum in the pod template rolls the router whenever the routes change.
    annotations: dict[str, Any] = {CHECKSUM: checksum(r.routes_json)}
    match = selector(ROUTER_COMPONENT, ROUTER_NAME)
    spec = deployment_spec(match, router_labels(r), annotations, pod, r.replicas)
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
    """Model pods accept traffic only from router pods, and only on the model port."""
    models = {"app.kubernetes.io/name": MODEL_COMPONENT, "app.kubernetes.io/part-of": PART_OF}
    spec = {
        "podSelector": {"matchLabels": models},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": selector(ROUTER_COMPONENT, ROUTER_NAME)}}],
                "ports": [{"protocol": "TCP", "port": MODEL_PORT}],
            }
        ],
    }
    return {"metadata": _metadata(r, "fleet-models-from-router"), "spec": spec}
