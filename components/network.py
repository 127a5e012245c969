"""Pure builders for the fleet's NetworkPolicies, which the `Platform` creates.

They are the platform's, not the router's: every model waits for the platform, so the
policies exist before the first model pod starts, and a pod is never unguarded.

- `fleet-models-allow-ingress`: model pods take traffic from router pods only, on the
  model port; with a Prometheus namespace, also from its pods (to scrape `/metrics`).
- `fleet-models-deny-egress`: model pods open no connection at all, not even DNS. The
  model server serves the model baked into its image (no registry, no MLflow, BentoML's
  usage tracking off: `BENTOML_DO_NOT_TRACK`), talks to its own workers over loopback,
  which no NetworkPolicy sees, and only answers: replies to admitted connections are
  allowed. A model is code (a pickle runs when it loads), so it gets no way out.
- `fleet-router-allow-ingress`: router pods take traffic from the ingress controller's
  namespace and, with a Prometheus namespace, from its pods, on the router port.

A NetworkPolicy admits ports, not paths: what the Ingress publishes is decided by its
paths (`components.router_manifests.router_ingress`). The kubelet's probes come from the
node, which NetworkPolicies always let in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.manifests import MODEL_COMPONENT, MODEL_PORT
from components.pod import MANAGED_BY, PART_OF, selector
from components.router_manifests import ROUTER_COMPONENT, ROUTER_NAME, ROUTER_PORT

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Label the API server sets on every namespace to its own name."""
MODELS_INGRESS = "fleet-models-allow-ingress"
MODELS_EGRESS = "fleet-models-deny-egress"
ROUTER_INGRESS = "fleet-router-allow-ingress"


@dataclass(frozen=True)
class Fences:
    """What the fleet's NetworkPolicies are made from."""

    namespace: str
    """Namespace of the fleet (models and router)."""
    ingress_namespace: str
    """Namespace of the ingress controller's pods, let in to the router pods."""
    prometheus_namespace: str | None = None
    """Namespace of the cluster's Prometheus, let in to model and router pods (their
    `/metrics`); None: no such rule."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """Labels added to every object."""


def model_pods() -> dict[str, str]:
    """Labels every model pod has, and no router pod."""
    return {"app.kubernetes.io/name": MODEL_COMPONENT, "app.kubernetes.io/part-of": PART_OF}


def router_pods() -> dict[str, str]:
    return selector(ROUTER_COMPONENT, ROUTER_NAME)


def models_ingress_policy(f: Fences) -> dict[str, Any]:
    """Model pods accept traffic only from router pods, and only on the model port; with
    `prometheus_namespace` set, also from pods of that namespace, to scrape `/metrics`
    (served on the model port)."""
    router = {"podSelector": {"matchLabels": router_pods()}}
    rules: list[dict[str, Any]] = [{"from": [router], "ports": _port(MODEL_PORT)}]
    if f.prometheus_namespace:
        rules.append(_from_namespace(f.prometheus_namespace, MODEL_PORT))
    spec = {
        "podSelector": {"matchLabels": model_pods()},
        "policyTypes": ["Ingress"],
        "ingress": rules,
    }
    return {"metadata": _metadata(f, MODELS_INGRESS), "spec": spec}


def models_egress_policy(f: Fences) -> dict[str, Any]:
    """Model pods open no connection: an Egress policy without rules denies all of it."""
    spec = {"podSelector": {"matchLabels": model_pods()}, "policyTypes": ["Egress"]}
    return {"metadata": _metadata(f, MODELS_EGRESS), "spec": spec}


def router_ingress_policy(f: Fences) -> dict[str, Any]:
    """Router pods accept traffic on the router port from the ingress controller's
    namespace and, with `prometheus_namespace` set, from that one; from nowhere else."""
    namespaces = [f.ingress_namespace]
    if f.prometheus_namespace and f.prometheus_namespace != f.ingress_namespace:
        namespaces.append(f.prometheus_namespace)
    spec = {
        "podSelector": {"matchLabels": router_pods()},
        "policyTypes": ["Ingress"],
        "ingress": [_from_namespace(ns, ROUTER_PORT) for ns in namespaces],
    }
    return {"metadata": _metadata(f, ROUTER_INGRESS), "spec": spec}


def network_policies(f: Fences) -> dict[str, dict[str, Any]]:
    """Every policy of the fleet, by the suffix of its Pulumi resource name."""
    return {
        "models-policy": models_ingress_policy(f),
        "models-egress-policy": models_egress_policy(f),
        "router-policy": router_ingress_policy(f),
    }


def _from_namespace(namespace: str, port: int) -> dict[str, Any]:
    """Pods of `namespace` (by the label the API server sets), on `port`."""
    peer = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}
    return {"from": [peer], "ports": _port(port)}


def _port(port: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port}]


def _metadata(f: Fences, name: str) -> dict[str, Any]:
    labels = {
        **f.extra_labels,
        "app.kubernetes.io/component": "network-policy",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    return {"name": name, "namespace": f.namespace, "labels": labels}
