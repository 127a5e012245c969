"""Pure builders for one model's Kubernetes objects (Deployment, Service, PDB, HPA).

Each returns `{"metadata": ..., "spec": ...}` as plain dicts; `ModelService` passes them
to `pulumi_kubernetes` and only wires in the image digest and the profiled memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.pod import ANNOTATION, PodParams, Text, deployment_spec, labels, pod_spec, selector
from fleet.host.images import PORT
from fleet.spec import Settings

MODEL_PORT = PORT
"""Port of the model server in the image (`fleet.host.images`)."""
MODEL_COMPONENT = "model-server"


@dataclass(frozen=True)
class ModelObjects:
    """What one model's Kubernetes objects are made from."""

    k8s_name: str
    """DNS-1035 name of the Deployment, Service and pods (`fleet.naming.k8s_name`)."""
    namespace: str
    """Namespace the objects live in."""
    model_name: str
    """MLflow registered model name."""
    version: int
    """Resolved MLflow model version."""
    run_id: str
    """MLflow run that produced the version."""
    model_uri: str
    """`models:/<name>/<version>`."""
    content_hash: str
    """Hash of everything in the image (`fleet.host.images.content_hash`)."""
    settings: Settings
    """Effective settings of the model (replicas, cpu, autoscaling...)."""
    image: Text
    """Image reference; by digest where the push returned one."""
    memory_request: Text
    """Memory request, from the profile or `memory.fixed_mib`."""
    memory_limit: Text
    """Memory limit, from the profile or `memory.fixed_mib`."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Registry Secrets to pull with."""
    extra_labels: dict[str, str] = field(default_factory=dict)
    """Labels added to every object."""


def model_labels(m: ModelObjects) -> dict[str, str]:
    return labels(MODEL_COMPONENT, m.k8s_name, "model", str(m.version), m.extra_labels)


def model_selector(m: ModelObjects) -> dict[str, str]:
    return selector(MODEL_COMPONENT, m.k8s_name)


def model_annotations(m: ModelObjects) -> dict[str, Text]:
    """Where the pod's model came from: the MLflow name, version, run and content hash."""
    return {
        f"{ANNOTATION}/model-name": m.model_name,
        f"{ANNOTATION}/model-version": str(m.version),
        f"{ANNOTATION}/model-uri": m.model_uri,
        f"{ANNOTATION}/run-id": m.run_id,
        f"{ANNOTATION}/content-hash": m.content_hash,
    }


def _metadata(m: ModelObjects, annotations: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": m.k8s_name,
        "namespace": m.namespace,
        "labels": model_labels(m),
    }
    if annotations:
        meta["annotations"] = model_annotations(m)
    return meta


def replicas(settings: Settings) -> int | None:
    """Fixed replica count, or None while an HPA owns it."""
    return None if settings.autoscaling else settings.replicas


def min_pods(settings: Settings) -> int:
    return settings.autoscaling.min_replicas if settings.autoscaling else settings.replicas


def model_deployment(m: ModelObjects) -> dict[str, Any]:
    pod = pod_spec(
        PodParams(
            container="model-server",
            image=m.image,
            port=MODEL_PORT,
            cpu=m.settings.cpu,
            memory_request=m.memory_request,
            memory_limit=m.memory_limit,
            # The server writes nothing; /tmp is where a model's own code would.
            scratch={"tmp": "/tmp"},
            image_pull_secrets=m.image_pull_secrets,
        )
    )
    spec = deployment_spec(
        model_selector(m), model_labels(m), model_annotations(m), pod, replicas(m.settings)
    )
    return {"metadata": _metadata(m, annotations=True), "spec": spec}


def model_service(m: ModelObjects) -> dict[str, Any]:
    spec = {
        "type": "ClusterIP",
        "selector": model_selector(m),
        "ports": [{"name": "http", "port": MODEL_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    return {"metadata": _metadata(m), "spec": spec}


def model_pdb(m: ModelObjects) -> dict[str, Any] | None:
    """A PodDisruptionBudget (one pod down at a time) when the model runs more than one pod."""
    if min_pods(m.settings) <= 1:
        return None
    spec = {"maxUnavailable": 1, "selector": {"matchLabels": model_selector(m)}}
    return {"metadata": _metadata(m), "spec": spec}


def model_hpa(m: ModelObjects) -> dict[str, Any] | None:
    """A CPU HorizontalPodAutoscaler when `autoscaling` is set."""
    auto = m.settings.autoscaling
    if auto is None:
        return None
    spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": m.k8s_name},
        "minReplicas": auto.min_replicas,
        "maxReplicas": auto.max_replicas,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": auto.cpu_utilization_percent,
                    },
                },
            }
        ],
    }
    return {"metadata": _metadata(m), "spec": spec}


def backend_url(k8s_name: str, namespace: str) -> str:
    """In-cluster URL of a model's Service, for the router's routes config."""
    return f"http://{k8s_name}.{namespace}.svc.cluster.local:{MODEL_PORT}"
