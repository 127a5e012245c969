"""The program on a generated fleet of 200 models (resolved in the test, no registry)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.program import deploy_fleet
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from tests.graph import checks
from tests.graph.fleetgen import generated_fleet, with_new_version
from tests.graph.harness import PRODUCTION_NAMESPACE, Capture, run_program, stack_config

SIZE = 200
CHANGED = 57
NAMESPACE = PRODUCTION_NAMESPACE


def deploy(fleet: Fleet, resolved: list[ResolvedModel]) -> Capture:
    return run_program(lambda: deploy_fleet(stack_config(), fleet, resolved), stack="production")


@pytest.fixture(scope="module")
def fleet200() -> tuple[Fleet, list[ResolvedModel]]:
    return generated_fleet(SIZE)


@pytest.fixture(scope="module")
def run200(fleet200) -> Capture:
    return deploy(*fleet200)


@pytest.fixture(scope="module")
def run200_changed(fleet200) -> Capture:
    fleet, resolved = fleet200
    return deploy(fleet, with_new_version(resolved, CHANGED))


def test_generated_fleet_covers_every_shape(fleet200):
    _, resolved = fleet200
    settings = [r.model.settings for r in resolved]
    assert len(resolved) == SIZE
    assert any(s.memory.fixed_mib for s in settings)
    assert any(s.replicas > 1 for s in settings)
    assert any(s.autoscaling for s in settings)


def test_every_model_has_exactly_its_children(run200, fleet200):
    checks.check_model_children(run200, fleet200[1])


def test_memory_comes_from_the_profile(run200, fleet200):
    checks.check_memory_from_profile(run200, fleet200[1])


def test_router_config_matches_the_spec(run200, fleet200):
    checks.check_router_config(run200, fleet200[0], fleet200[1], NAMESPACE)


def test_objects_validate_and_meet_restricted_pss(run200):
    assert checks.check_objects(run200) >= SIZE * 2


def test_rollout_order(run200, fleet200):
    checks.check_dependencies(run200, fleet200[1])


def test_network_policies_without_prometheus(run200):
    """No fleet:prometheusNamespace: the ingress controller's namespace alone reaches the
    router, the router alone the models."""
    checks.check_network_policies(run200, prometheus=None)


def test_the_ingress_publishes_only_the_routes(run200):
    """A production-like stack, docs not public: one path per route and experiment."""
    checks.check_ingress(run200, public_docs=False)


def test_hpa_owns_the_replica_count(run200, fleet200):
    for r in fleet200[1]:
        dep = run200.named(f"{r.model.k8s_name}-deployment").k8s_object()
        if r.model.settings.autoscaling:
            assert "replicas" not in dep["spec"], r.name
        else:
            assert dep["spec"]["replicas"] == r.model.settings.replicas


def test_one_new_version_changes_only_that_model_and_the_router_config(
    run200, run200_changed, fleet200
):
    k = fleet200[1][CHANGED].model.k8s_name
    # Also proves the program is deterministic: the other ~1000 resources are identical.
    changed = _changed(run200, run200_changed)
    own = {f"{k}-{child}" for child in ("image", "profile", "deployment", "service", "pdb", "hpa")}
    assert changed <= own | {"router-routes", "router-deployment"}, sorted(changed - own)
    # The image is rebuilt, re-profiled, rolled out, and the routes name the new version.
    assert {f"{k}-image", f"{k}-profile", f"{k}-deployment", "router-routes"} <= changed
    old = run200.named(f"{k}-image").inputs
    new = run200_changed.named(f"{k}-image").inputs
    assert old["content_hash"] != new["content_hash"]
    version = {r["model"]: r["version"] for r in checks.routes_config(run200_changed)["routes"]}
    assert version[fleet200[1][CHANGED].name] == fleet200[1][CHANGED].version + 1
    # New routes are a new, content-named ConfigMap, and the router rolls onto it.
    names = [
        run.named("router-routes").inputs["metadata"]["name"] for run in (run200, run200_changed)
    ]
    assert names[0] != names[1]
    assert "router-deployment" in changed


def _changed(a: Capture, b: Capture) -> set[str]:
    """Names of resources whose inputs differ between two runs (or exist in one only)."""
    by_name_a = {r.name: _canon(r.inputs) for r in a.resources.values()}
    by_name_b = {r.name: _canon(r.inputs) for r in b.resources.values()}
    names = set(by_name_a) | set(by_name_b)
    return {n for n in names if by_name_a.get(n) != by_name_b.get(n)}


def _canon(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, default=str)
