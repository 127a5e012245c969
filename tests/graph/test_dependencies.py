"""The order the engine would follow, and a preview of the same program.

The harness records what the SDK sends the engine with each resource: explicit
`depends_on` (a component stands for its descendants) and the dependencies carried by
output-valued inputs. These tests check the edges a safe rollout needs, on a generated
fleet whose router image the program builds, once as `pulumi up` and once as
`pulumi preview` (outputs no provider has computed yet are unknown).
"""

from __future__ import annotations

import dataclasses

import pytest

from components.config import RouterConfig
from components.program import deploy_fleet
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from tests.graph import checks
from tests.graph.fleetgen import generated_fleet
from tests.graph.harness import Capture, run_program, stack_config

SIZE = 24


@pytest.fixture(scope="module")
def fleet24() -> tuple[Fleet, list[ResolvedModel]]:
    return generated_fleet(SIZE)


def _deploy(fleet: Fleet, resolved: list[ResolvedModel], preview: bool) -> Capture:
    def body() -> None:
        # No router image given: the program builds one (a RouterImage resource).
        cfg = dataclasses.replace(stack_config(), router=RouterConfig(replicas=3))
        deploy_fleet(cfg, fleet, resolved)

    return run_program(body, stack="production", preview=preview)


@pytest.fixture(scope="module")
def up(fleet24) -> Capture:
    return _deploy(*fleet24, preview=False)


@pytest.fixture(scope="module")
def preview(fleet24) -> Capture:
    return _deploy(*fleet24, preview=True)


def test_the_fleet_has_every_shape(fleet24, up):
    _, resolved = fleet24
    assert any(r.model.settings.memory.fixed_mib for r in resolved)
    assert any(r.model.settings.autoscaling for r in resolved)
    assert [r.name for r in up.resources.values() if r.name == "router-image"]
    assert [r.name for r in up.resources.values() if r.name == "platform-pull-secret"]


@pytest.mark.parametrize("mode", ["up", "preview"])
def test_rollout_order(mode, fleet24, up, preview):
    cap = up if mode == "up" else preview
    checks.check_dependencies(cap, fleet24[1])


def test_the_router_deployment_waits_for_its_routes_and_every_model(up, fleet24):
    for r in fleet24[1]:
        assert up.after("router-deployment", f"{r.model.k8s_name}-deployment"), r.name
        assert up.after("router-routes", f"{r.model.k8s_name}-deployment"), r.name
    assert up.after("router-deployment", "router-routes")
    assert not up.after("router-routes", "router-deployment")


def test_the_router_image_builds_alongside_the_models(up, fleet24):
    assert up.after("router-image", "platform-namespace")
    for r in fleet24[1]:
        k = r.model.k8s_name
        assert not up.after("router-image", f"{k}-image"), r.name
        assert not up.after("router-image", f"{k}-deployment"), r.name
    # Nor do the parts of the router that name no model version.
    for name in ("router-service", "router-ingress", "router-pdb"):
        assert not up.after(name, f"{fleet24[1][0].model.k8s_name}-deployment"), name


def test_the_network_policies_come_before_every_pod(up, fleet24):
    """The policies are the platform's: they wait for the namespace only, and every
    model's image, profile and Deployment, and the router's Deployment, wait for them."""
    platform = up.named("platform")
    for policy in checks.POLICIES:
        assert up.named(policy).parent == platform.urn
        assert up.after(policy, "platform-namespace"), policy
        assert up.after("router-deployment", policy)
        for r in fleet24[1]:
            k = r.model.k8s_name
            assert up.after(f"{k}-deployment", policy), (r.name, policy)
            assert not up.after(policy, f"{k}-image"), (r.name, policy)


def test_the_chain_of_one_model(up, fleet24):
    r = next(r for r in fleet24[1] if r.model.settings.memory.fixed_mib is None)
    k = r.model.k8s_name
    assert up.after(f"{k}-deployment", f"{k}-profile")
    assert up.after(f"{k}-profile", f"{k}-image")
    assert up.after(f"{k}-image", "platform-pull-secret")
    assert up.after("platform-pull-secret", "platform-namespace")
    assert not up.after(f"{k}-image", f"{k}-deployment")


def test_a_preview_builds_the_same_graph(preview, up, fleet24):
    checks.check_preview_graph(preview, up, fleet24[1])


def test_a_preview_shows_the_routes_in_full(preview, fleet24):
    """What a merge request's preview shows: the routes (and so the ConfigMap's name) are
    the program's own work, known before any image is built."""
    checks.check_router_config(preview, fleet24[0], fleet24[1], "fleet")
