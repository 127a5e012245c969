"""Pure builders shared by every workload: labels, security context, pod and rollout.

They take plain values and return plain dicts in the Kubernetes API's own shape
(camelCase keys), which `pulumi_kubernetes` accepts as-is. Values that are only known
during a deployment (an image digest, a measured memory size) may be passed as Pulumi
`Output`s; the builders never look inside them, so a preview shows exactly which field
is still unknown instead of a whole unknown spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from fleet.host.images import UID

PART_OF = "model-fleet"
MANAGED_BY = "pulumi"
ANNOTATION = "fleet.model-fleet.io"
"""Prefix of our annotations (`fleet.model-fleet.io/model-name`)."""
RUN_AS_USER = UID
"""Numeric non-root user the containers run as: the image's `USER` (`fleet.host.images.UID`)."""

Text = str | pulumi.Output[str]
"""A string that may still be unknown at program time."""

SCRATCH_MIB = 128
"""`sizeLimit` of each emptyDir: the kubelet evicts a pod that writes more into one."""
EPHEMERAL_REQUEST_MIB = 64
"""`ephemeral-storage` request of a container: node disk its emptyDirs and logs use."""
EPHEMERAL_LIMIT_MIB = 256
"""`ephemeral-storage` limit of a container; the pod (one container) is evicted when its
emptyDirs, writable layer and logs together use more. As the profiler's /tmp
(`profiler.docker.TMP_MIB`), where a model server ran under its measurement."""


def labels(
    name: str, instance: str, component: str, version: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The recommended `app.kubernetes.io/*` labels, plus `extra`."""
    out = dict(extra or {})
    out.update(
        {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": PART_OF,
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/version": version,
        }
    )
    return out


def selector(name: str, instance: str) -> dict[str, str]:
    """Selector labels: the subset of `labels` that never changes for a workload."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": instance}


def pod_security_context() -> dict[str, Any]:
    """Pod-level part of the restricted Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level part of the restricted Pod Security Standard, read-only root."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@dataclass(frozen=True)
class PodParams:
    """One single-container pod: what differs between the model server and the router."""

    container: str
    """Container name."""
    image: Text
    """Image reference, by digest where one is known."""
    port: int
    """The HTTP port the server listens on (named `http`)."""
    cpu: str
    """CPU request."""
    memory_request: Text
    """Memory request (`512Mi`)."""
    memory_limit: Text
    """Memory limit (`768Mi`)."""
    readiness_path: str = "/readyz"
    """GET path that answers 200 once the server can take traffic."""
    liveness_path: str = "/livez"
    """GET path that answers 200 while the process is healthy."""
    command: list[str] = field(default_factory=list)
    """Container command; empty keeps the image's entrypoint."""
    args: list[str] = field(default_factory=list)
    """Container args."""
    env: dict[str, str] = field(default_factory=dict)
    """Plain environment; never secrets."""
    scratch: dict[str, str] = field(default_factory=lambda: {"tmp": "/tmp"})
    """emptyDir volume name -> mount path: the only writable places (root is read-only)."""
    scratch_mib: int = SCRATCH_MIB
    """`sizeLimit` of each of those emptyDirs."""
    ephemeral_request_mib: int = EPHEMERAL_REQUEST_MIB
    """`ephemeral-storage` request of the container."""
    ephemeral_limit_mib: int = EPHEMERAL_LIMIT_MIB
    """`ephemeral-storage` limit of the container (emptyDirs, writable layer and logs)."""
    config_maps: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Volume name -> (ConfigMap name, mount path), mounted read-only."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Names of registry Secrets to pull the image with."""
    drain_seconds: int = 5
    """preStop pause: the endpoint is removed from Services before the server stops."""
    grace_seconds: int = 30
    """terminationGracePeriodSeconds: time for in-flight requests after SIGTERM."""


def pod_spec(p: PodParams) -> dict[str, Any]:
    """A pod spec meeting the restricted Pod Security Standard, with probes and draining."""
    probe = {"port": "http", "scheme": "HTTP"}
    mounts: list[dict[str, Any]] = [{"name": v, "mountPath": path} for v, path in p.scratch.items()]
    mounts += [
        {"name": v, "mountPath": path, "readOnly": True} for v, (_, path) in p.config_maps.items()
    ]
    volumes: list[dict[str, Any]] = [
        {"name": v, "emptyDir": {"sizeLimit": mib(p.scratch_mib)}} for v in p.scratch
    ]
    volumes += [{"name": v, "configMap": {"name": cm}} for v, (cm, _) in p.config_maps.items()]
    container: dict[str, Any] = {
        "name": p.container,
        "image": p.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": p.port, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in sorted(p.env.items())],
        "resources": {
            "requests": {
                "cpu": p.cpu,
                "memory": p.memory_request,
                "ephemeral-storage": mib(p.ephemeral_request_mib),
            },
            # No CPU limit: throttling hurts latency more than a noisy neighbour does.
            "limits": {"memory": p.memory_limit, "ephemeral-storage": mib(p.ephemeral_limit_mib)},
        },
        "startupProbe": {
            "httpGet": {"path": p.liveness_path, **probe},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "readinessProbe": {
            "httpGet": {"path": p.readiness_path, **probe},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": p.liveness_path, **probe},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(p.drain_seconds)]}}},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if p.command:
        container["command"] = list(p.command)
    if p.args:
        container["args"] = list(p.args)
    spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": p.grace_seconds,
        # Neither the model server nor the router talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        # With hundreds of Services in one namespace, service-link env vars would swamp pods.
        "enableServiceLinks": False,
        "volumes": volumes,
    }
    if p.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in p.image_pull_secrets]
    return spec


def deployment_spec(
    match: dict[str, str],
    pod_labels: dict[str, str],
    pod_annotations: dict[str, Text],
    pod: dict[str, Any],
    replicas: int | None,
) -> dict[str, Any]:
    """A Deployment spec that rolls with no unavailable pod (one surge pod at a time).

    `replicas=None` leaves the count to a HorizontalPodAutoscaler.
    """
    spec: dict[str, Any] = {
        "selector": {"matchLabels": match},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "revisionHistoryLimit": 3,
        "template": {
            "metadata": {"labels": pod_labels, "annotations": pod_annotations},
            "spec": pod,
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return spec


def mib(value: int) -> str:
    """A memory quantity in MiB."""
    return f"{value}Mi"
