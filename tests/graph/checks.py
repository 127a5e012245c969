"""Assertions over a captured program run, shared by the demo and generated-fleet tests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from components.manifests import MODEL_PORT
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from tests.graph.harness import IMAGE_TYPE, PROFILE_TYPE, Capture, fake_memory
from tests.graph.k8s_schema import schema_errors
from tests.graph.pss import pod_spec_of, violations

SERVICE_TYPE = "fleet:index:ModelService"
ROUTER_TYPE = "fleet:index:Router"


def expected_children(r: ResolvedModel) -> dict[str, str]:
    """name -> type of the children a model's ModelService must have, no more, no less."""
    k = r.model.k8s_name
    s = r.model.settings
    out = {
        f"{k}-image": IMAGE_TYPE,
        f"{k}-deployment": "kubernetes:apps/v1:Deployment",
        f"{k}-service": "kubernetes:core/v1:Service",
    }
    if s.memory.fixed_mib is None:
        out[f"{k}-profile"] = PROFILE_TYPE
    pods = s.autoscaling.min_replicas if s.autoscaling else s.replicas
    if pods > 1:
        out[f"{k}-pdb"] = "kubernetes:policy/v1:PodDisruptionBudget"
    if s.autoscaling:
        out[f"{k}-hpa"] = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
    return out


def check_model_children(cap: Capture, resolved: list[ResolvedModel]) -> None:
    services = cap.of_type(SERVICE_TYPE)
    assert sorted(s.name for s in services) == sorted(r.model.k8s_name for r in resolved)
    for r in resolved:
        svc = cap.named(r.model.k8s_name)
        got = {c.name: c.typ for c in cap.children(svc)}
        assert got == expected_children(r), f"model '{r.name}': children {sorted(got)}"


def check_memory_from_profile(cap: Capture, resolved: list[ResolvedModel]) -> None:
    for r in resolved:
        k = r.model.k8s_name
        image = cap.named(f"{k}-image").outputs
        dep = cap.named(f"{k}-deployment").k8s_object()
        container = dep["spec"]["template"]["spec"]["containers"][0]
        fixed = r.model.settings.memory.fixed_mib
        if fixed is None:
            profile = cap.named(f"{k}-profile")
            # The profile ran on exactly the image that is deployed.
            assert profile.inputs["image"] == image["image"]
            assert profile.inputs["content_hash"] == image["content_hash"]
            want = fake_memory(image["content_hash"])
            assert (profile.outputs["request_mib"], profile.outputs["limit_mib"]) == want
        else:
            want = (fixed, fixed)
        res = container["resources"]
        assert res["requests"]["memory"] == f"{want[0]}Mi", r.name
        assert res["limits"]["memory"] == f"{want[1]}Mi", r.name
        assert res["requests"]["cpu"] == r.model.settings.cpu
        assert container["image"] == image["image"] and "@sha256:" in container["image"]
        notes = dep["spec"]["template"]["metadata"]["annotations"]
        assert notes["fleet.model-fleet.io/model-name"] == r.name
        assert notes["fleet.model-fleet.io/model-version"] == str(r.version)
        assert notes["fleet.model-fleet.io/run-id"] == r.run_id
        assert notes["fleet.model-fleet.io/content-hash"] == image["content_hash"]


def routes_config(cap: Capture) -> dict[str, Any]:
    cm = cap.named("router-routes").k8s_object()
    config: dict[str, Any] = json.loads(cm["data"]["routes.json"])
    dep = cap.named("router-deployment").k8s_object()
    checksum = dep["spec"]["template"]["metadata"]["annotations"][
        "fleet.model-fleet.io/routes-checksum"
    ]
    assert checksum == hashlib.sha256(cm["data"]["routes.json"].encode()).hexdigest()
    return config


def check_router_config(
    cap: Capture, fleet: Fleet, resolved: list[ResolvedModel], namespace: str
) -> None:
    config = routes_config(cap)
    routes = {r["model"]: r for r in config["routes"]}
    assert sorted(routes) == sorted(r.name for r in resolved)
    for r in resolved:
        route = routes[r.name]
        assert route["path"] == r.model.route
        assert route["version"] == r.version
        assert route["backend"] == (
            f"http://{r.model.k8s_name}.{namespace}.svc.cluster.local:{MODEL_PORT}"
        )
        assert route["inputs"] == [c.to_dict() for c in r.inputs]
    want = [
        {
            "path": e.route,
            "sticky_header": e.sticky_header,
            "variants": [{"model": v.model, "weight": v.weight} for v in e.variants],
        }
        for e in fleet.experiments
    ]
    assert config["experiments"] == want


def check_objects(cap: Capture) -> int:
    """Every Kubernetes object validates and every pod meets restricted PSS; returns count."""
    objects = [r.k8s_object() for r in cap.k8s()]
    errors = [e for obj in objects for e in schema_errors(obj)]
    assert not errors, "\n".join(errors[:20])
    for obj in objects:
        pod = pod_spec_of(obj)
        if pod is not None:
            bad = violations(pod)
            assert not bad, f"{obj['kind']}/{obj['metadata']['name']}: {bad}"
    return len(objects)
