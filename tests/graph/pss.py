"""A checker for the restricted Pod Security Standard (Kubernetes 1.33), plus our own rule
that the root filesystem is read-only.

It follows https://kubernetes.io/docs/concepts/security/pod-security-standards/ for the
baseline and restricted levels, field by field, over a pod spec as the API sees it.
"""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def violations(pod: dict[str, Any]) -> list[str]:
    """Every way `pod` (a PodSpec) breaks restricted PSS or runs with a writable root."""
    out: list[str] = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"spec.{key} is true")
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {vol.get('name')}: type {sorted(kinds)} is not allowed")
    psc = pod.get("securityContext", {})
    for sysctl in psc.get("sysctls", []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is not safe")
    if psc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser is 0")
    if "windowsOptions" in psc and psc["windowsOptions"].get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess is true")
    containers = [("containers", c) for c in pod.get("containers", [])] + [
        ("initContainers", c) for c in pod.get("initContainers", [])
    ]
    if not pod.get("containers"):
        out.append("no containers")
    for group, c in containers:
        out += [f"{group}[{c.get('name')}]: {v}" for v in _container(c, psc)]
    return out


def _container(c: dict[str, Any], psc: dict[str, Any]) -> list[str]:
    out: list[str] = []
    sc = c.get("securityContext", {})
    if sc.get("privileged"):
        out.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append("allowPrivilegeEscalation is not false")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []):
        out.append("capabilities.drop does not hold ALL")
    if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
        out.append(f"capabilities.add {caps.get('add')} beyond NET_BIND_SERVICE")
    if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        out.append("runAsNonRoot is not true (pod or container)")
    if sc.get("runAsUser") == 0:
        out.append("runAsUser is 0")
    seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        out.append("seccompProfile is not RuntimeDefault or Localhost")
    if sc.get("procMount", "Default") != "Default":
        out.append("procMount is not Default")
    for kind in ("appArmorProfile",):
        prof = sc.get(kind) or psc.get(kind) or {}
        if prof.get("type") == "Unconfined":
            out.append(f"{kind} is Unconfined")
    if (sc.get("seLinuxOptions") or {}).get("type") not in (
        None,
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ):
        out.append("seLinuxOptions.type is not allowed")
    for port in c.get("ports", []):
        if port.get("hostPort"):
            out.append(f"hostPort {port['hostPort']}")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append("readOnlyRootFilesystem is not true")
    return out


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a workload object, or None for other kinds."""
    kind = obj.get("kind")
    if kind == "Pod":
        return dict(obj["spec"])
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return dict(obj["spec"]["template"]["spec"])
    if kind == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return None
