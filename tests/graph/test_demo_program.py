"""The real program (`__main__.py`) under Pulumi's mocks, on the demo MLflow registry."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pytest

from tests.graph import checks
from tests.graph.harness import IMAGE_TYPE, PROFILE_TYPE, Capture, is_secret, run_program

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-registry-password"
TOKEN = "s3cret-mlflow-token"
NAMESPACE = "fleet-staging"
PROMETHEUS = "monitoring"
INGRESS_NAMESPACE = "edge-ingress"


def run_main(demo_uri: str, preview: bool) -> tuple[Capture, dict[str, Any]]:
    """`__main__.py` under mocks, as `pulumi up` (or `pulumi preview`) on staging."""
    config = {
        "fleet:namespace": NAMESPACE,
        "fleet:alias": "challenger",
        "fleet:modelsFile": str(ROOT / "models.yaml"),
        "fleet:trackingUri": demo_uri,
        "fleet:registry": "registry.example.com/model-fleet",
        "fleet:registryUsername": "model-fleet-ci",
        "fleet:registryPassword": PASSWORD,
        "fleet:mlflowToken": TOKEN,
        "fleet:router": json.dumps({"replicas": 2}),  # no image: the program builds it
        "fleet:ingress": json.dumps({"host": "models.example.com", "tlsSecret": "models-tls"}),
        "fleet:prometheusNamespace": PROMETHEUS,
        "fleet:ingressNamespace": INGRESS_NAMESPACE,
    }
    secret = ["fleet:registryPassword", "fleet:mlflowToken"]
    exports: dict[str, Any] = {}
    real_export = pulumi.export
    pulumi.export = exports.__setitem__  # what `pulumi stack output` would list
    try:
        cap = run_program(
            lambda: runpy.run_path(str(ROOT / "__main__.py")),
            stack="staging",
            config=config,
            secret_keys=secret,
            preview=preview,
        )
    finally:
        pulumi.export = real_export
    return cap, {**cap.result, "exports": exports}


@pytest.fixture(scope="module")
def demo_run(demo_uri: str) -> tuple[Capture, dict[str, Any]]:
    return run_main(demo_uri, preview=False)


@pytest.fixture(scope="module")
def demo_preview(demo_uri: str) -> tuple[Capture, dict[str, Any]]:
    return run_main(demo_uri, preview=True)


def test_every_demo_model_has_exactly_its_children(demo_run):
    cap, program = demo_run
    assert len(program["models"]) == 11
    checks.check_model_children(cap, program["models"])
    # Components hang off the stack; nothing else sits at the root.
    roots = {r.typ for r in cap.resources.values() if r.parent.endswith("model-fleet-staging")}
    assert roots <= {
        checks.SERVICE_TYPE,
        checks.PACK_TYPE,
        checks.ROUTER_TYPE,
        "fleet:index:Platform",
    }
    # The demo fleet packs its ten small models together; demand_forecast_2 is dedicated.
    packed = sorted(r.name for r in program["models"] if r.model.packed)
    assert checks.packs(cap) == {"pack-0": packed}
    assert [r.name for r in program["models"] if not r.model.packed] == ["demand_forecast_2"]
    router = cap.named("router")
    assert {c.name for c in cap.children(router)} == {
        "router-image",
        "router-routes",
        "router-deployment",
        "router-service",
        "router-pdb",
        "router-ingress",
    }
    # The NetworkPolicies are the platform's: every model and the router wait for it.
    platform = cap.named("platform")
    assert {c.name for c in cap.children(platform)} == {
        "platform-namespace",
        "platform-pull-secret",
        *checks.POLICIES,
    }


def test_stack_alias_picks_the_versions(demo_run):
    _, program = demo_run
    assert all(r.model.alias in (None, "challenger") for r in program["models"])
    assert any(r.model.alias == "challenger" for r in program["models"])


def test_memory_comes_from_the_profile(demo_run):
    cap, program = demo_run
    checks.check_memory_from_profile(cap, program["models"])
    checks.check_packs(cap, program["models"], program["fleet"])


def test_router_config_matches_the_spec(demo_run):
    cap, program = demo_run
    checks.check_router_config(cap, program["fleet"], program["models"], NAMESPACE)
    ingress = cap.named("router-ingress").k8s_object()
    assert ingress["spec"]["tls"] == [{"hosts": ["models.example.com"], "secretName": "models-tls"}]
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_objects_validate_and_meet_restricted_pss(demo_run):
    cap, _ = demo_run
    # One dedicated model and one pack (Deployment, Service; a PDB for the pack's 2 pods).
    assert checks.check_objects(cap) >= 2 * 2 + 1 + 6


def test_secrets_stay_secret(demo_run):
    cap, _ = demo_run
    for r in cap.k8s():
        text = json.dumps(r.k8s_object())
        if r.name == "platform-pull-secret":
            assert is_secret(r.inputs["stringData"])
            continue
        assert PASSWORD not in text and TOKEN not in text, r.name
    for image in cap.of_type(IMAGE_TYPE):
        assert is_secret(image.inputs["registry_password"])
        assert is_secret(image.inputs["mlflow_token"])
    # The profile pulls with the same credentials, as secret as the push's.
    profiles = cap.of_type(PROFILE_TYPE)
    assert profiles and all(is_secret(p.inputs["registry_password"]) for p in profiles)
    # (What a provider returns is the provider's: test_dynamic_providers checks it holds
    # no secret; here the outputs would be the mock's own.)


def test_namespace_enforces_restricted(demo_run):
    cap, _ = demo_run
    ns = cap.named("platform-namespace").k8s_object()
    assert ns["metadata"]["name"] == NAMESPACE
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_outputs_name_the_router_and_every_model(demo_run):
    _, program = demo_run
    exports = program["exports"]
    assert exports["router_url"] == "https://models.example.com"
    assert exports["namespace"] == NAMESPACE
    models = exports["models"]
    assert sorted(models) == sorted(r.name for r in program["models"])
    for r in program["models"]:
        assert models[r.name]["version"] == r.version
        sizing = "pack" if r.model.packed else "memory_request_mib"
        assert set(models[r.name]) == {"version", "image", sizing}
    assert set(exports["packs"]) == {"pack-0"}
    assert set(exports["packs"]["pack-0"]) == {"models", "image", "memory_request_mib"}


def test_router_runs_the_image_it_built(demo_run):
    cap, _ = demo_run
    built = cap.named("router-image")
    assert built.inputs["image_ref"].startswith("registry.example.com/model-fleet/fleet-router:")
    dep = cap.named("router-deployment").k8s_object()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    # STAND-IN reference from the mock: whatever the image resource returned runs.
    assert container["image"] == built.outputs["image"]
    assert built.urn in cap.named("router-deployment").property_dependencies["spec"]
    version = dep["metadata"]["labels"]["app.kubernetes.io/version"]
    assert built.inputs["content_hash"].startswith(version)


def test_rollout_order(demo_run):
    cap, program = demo_run
    checks.check_dependencies(cap, program["models"])


def test_prometheus_may_scrape_the_models(demo_run):
    cap, _ = demo_run
    policy = cap.named("platform-models-policy").k8s_object()
    rules = policy["spec"]["ingress"]
    scrape = {"kubernetes.io/metadata.name": PROMETHEUS}
    assert {
        "from": [{"namespaceSelector": {"matchLabels": scrape}}],
        "ports": rules[0]["ports"],
    } in (rules)


def test_network_policies_fence_in_the_pods(demo_run):
    """The router admits the ingress controller's namespace (fleet:ingressNamespace) and
    Prometheus's only; model pods admit the router and Prometheus, and open nothing."""
    cap, _ = demo_run
    checks.check_network_policies(cap, PROMETHEUS, INGRESS_NAMESPACE)


def test_the_ingress_publishes_the_routes_and_the_docs(demo_run):
    """The stack does not set fleet:publicDocs: the docs are public (the default)."""
    cap, program = demo_run
    checks.check_ingress(cap, public_docs=True)
    paths = {
        p["path"]
        for p in cap.named("router-ingress").k8s_object()["spec"]["rules"][0]["http"]["paths"]
    }
    assert {r.model.route for r in program["models"]} <= paths
    assert {e.route for e in program["fleet"].experiments} <= paths


def test_a_preview_builds_the_same_graph(demo_preview, demo_run):
    preview, program = demo_preview
    up, _ = demo_run
    checks.check_preview_graph(preview, up, program["models"])
    checks.check_dependencies(preview, program["models"])
    # The routes (and the router's rollout) are known before any image is built.
    assert checks.routes_config(preview) == checks.routes_config(up)
