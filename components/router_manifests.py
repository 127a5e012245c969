"""Pure builders for the router's Kubernetes objects (its NetworkPolicy and the models'
are the platform's: `components.network`)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from components.config import IngressConfig
from components.pod import (
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
DOCS_PATHS = (
    "/docs",
    "/docs/oauth2-redirect",
    "/docs/swagger-ui-bundle.js",
    "/docs/swagger-ui.css",
    "/docs/favicon.png",
    "/openapi.json",
)
"""The router's API docs (Swagger UI, its OAuth2 redirect page, the assets the router
serves for it itself, the OpenAPI document), published by the Ingress only with
`fleet:publicDocs`."""
ROUTER_OWN_PATHS = (
    *DOCS_PATHS,
    "/redoc",
    "/redoc/redoc.standalone.js",
    "/healthz",
    "/readyz",
    "/metrics",
)
"""Every path the router serves besides the routes (tests/unit/test_manifests.py checks
this against the router app). The Ingress never publishes one of them as a route."""
EXACT_PATH = re.compile(r"/[A-Za-z0-9/_-]*")
"""Paths an `Exact` Ingress path may hold: ingress-nginx refuses others (a dot, as in
`/openapi.json`) with `strict-validate-path-type`, its default since v1.12."""


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


def ingress_paths(r: RouterObjects) -> list[str]:
    """What the Ingress publishes: each model and experiment route of the routes config,
    then, with `public_docs`, the API docs. Never `/metrics`, `/healthz` or `/readyz`
    (Prometheus scrapes `/metrics` in the cluster), nor a docs path as a route."""
    config = json.loads(r.routes_json)
    routes = [e["path"] for key in ("routes", "experiments") for e in config.get(key, [])]
    paths = sorted(set(routes) - set(ROUTER_OWN_PATHS))
    return paths + list(DOCS_PATHS) if r.ingress.public_docs else paths


def ingress_path(path: str, backend: dict[str, Any]) -> dict[str, Any]:
    """`path` alone: `Exact`; a path ingress-nginx does not take as `Exact` (a dot in it)
    is `ImplementationSpecific`, which it matches as a prefix. The router answers only
    its exact paths (no redirects, 404 for the rest), so a longer path reaches nothing."""
    kind = "Exact" if EXACT_PATH.fullmatch(path) else "ImplementationSpecific"
    return {"path": path, "pathType": kind, "backend": backend}


def router_ingress(r: RouterObjects) -> dict[str, Any]:
    """The Ingress: one path per route (and the docs with `public_docs`), nothing else;
    a request for any other path is the ingress controller's 404."""
    backend = {"service": {"name": ROUTER_NAME, "port": {"name": "http"}}}
    rule: dict[str, Any] = {"host": r.ingress.host}
    paths = [ingress_path(p, backend) for p in ingress_paths(r)]
    if paths:  # the API refuses an empty list of paths; a rule without any serves nothing
        rule["http"] = {"paths": paths}
    spec: dict[str, Any] = {"ingressClassName": r.ingress.class_name, "rules": [rule]}
    if r.ingress.tls_secret:
        spec["tls"] = [{"hosts": [r.ingress.host], "secretName": r.ingress.tls_secret}]
    return {"metadata": _metadata(r), "spec": spec}


def router_url(ingress: IngressConfig) -> str:
    scheme = "https" if ingress.tls_secret else "http"
    return f"{scheme}://{ingress.host}"
