"""The program on a generated fleet of 150 models with packing on (no registry).

The placement file is what `fleet place` would have written after measuring: sizes per
model (here STAND-IN sizes, `harness.stand_in_pack_size`, the same numbers the mocked
profiles return) and the packs they were placed in.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.program import deploy_fleet
from fleet.packing import PackSize, Placement, PlacementFile, place
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from tests.graph import checks
from tests.graph.fleetgen import generated_fleet, with_new_version
from tests.graph.harness import (
    PRODUCTION_NAMESPACE,
    Capture,
    run_program,
    stack_config,
    stand_in_pack_size,
)

SIZE = 150
PACKING = {"enabled": True, "memory_budget_mib": 1024, "max_models": 40, "replicas": 2}
NAMESPACE = PRODUCTION_NAMESPACE


def deploy(fleet: Fleet, resolved: list[ResolvedModel], placed: PlacementFile) -> Capture:
    return run_program(
        lambda: deploy_fleet(stack_config(), fleet, resolved, placed), stack="production"
    )


def measured(capture: Capture, resolved: list[ResolvedModel]) -> dict[str, PackSize]:
    """What `fleet place` would record: each packed model's size for its image."""
    out = {}
    for r in resolved:
        if r.model.packed:
            chash = capture.named(f"{r.model.k8s_name}-image").inputs["content_hash"]
            out[r.name] = PackSize(**stand_in_pack_size(chash), content_hash=chash)
    return out


@pytest.fixture(scope="module")
def fleet150() -> tuple[Fleet, list[ResolvedModel]]:
    return generated_fleet(SIZE, PACKING)


@pytest.fixture(scope="module")
def first_run(fleet150) -> Capture:
    """A first `up` with no placement file: every model placed by the estimate."""
    return deploy(*fleet150, PlacementFile())


@pytest.fixture(scope="module")
def placed(fleet150, first_run) -> PlacementFile:
    fleet, resolved = fleet150
    sizes = measured(first_run, resolved)
    placement = place(sizes, Placement(), fleet.packing, fleet.defaults.memory)
    return PlacementFile(placement, sizes)


@pytest.fixture(scope="module")
def run150(fleet150, placed) -> Capture:
    return deploy(*fleet150, placed)


CHANGED = 41  # a packed model (not one of the dedicated ones)


@pytest.fixture(scope="module")
def run150_changed(fleet150, placed) -> Capture:
    fleet, resolved = fleet150
    return deploy(fleet, with_new_version(resolved, CHANGED), placed)


def test_most_models_are_packed_and_packs_hold_them_all(run150, fleet150, placed):
    _, resolved = fleet150
    packed = [r for r in resolved if r.model.packed]
    assert len(packed) > 100 and len(packed) < SIZE
    assert resolved[CHANGED].model.packed
    checks.check_model_children(run150, resolved)
    assert checks.packs(run150) == {p: list(ms) for p, ms in placed.placement.packs.items()}
    assert 2 <= len(placed.placement.packs) <= 5


def test_packs_run_their_members_with_memory_from_their_profiles(run150, fleet150):
    checks.check_memory_from_profile(run150, fleet150[1])
    checks.check_packs(run150, fleet150[1], fleet150[0])


def test_router_routes_packed_models_to_their_pack(run150, fleet150):
    checks.check_router_config(run150, fleet150[0], fleet150[1], NAMESPACE)


def test_objects_validate_and_meet_restricted_pss(run150):
    checks.check_objects(run150)
    checks.check_network_policies(run150, prometheus=None)


def test_rollout_order(run150, fleet150):
    checks.check_dependencies(run150, fleet150[1])


def test_one_new_version_builds_one_layer_profiles_one_model_and_rolls_one_pack(
    run150, run150_changed, fleet150, placed
):
    r = fleet150[1][CHANGED]
    k = r.model.k8s_name
    pack = placed.placement.pack_of()[r.name]
    changed = _changed(run150, run150_changed)
    # One model image (its own layer: the pack image stacks the others as they are),
    # one profile, one pack's image and Deployment; the routes name the new version.
    assert changed == {
        f"{k}-image",
        f"{k}-profile",
        f"{pack}-image",
        f"{pack}-deployment",
        "router-routes",
        "router-deployment",
    }
    old = {m["model"]["name"]: m for m in run150.named(f"{pack}-image").inputs["members"]}
    new = {m["model"]["name"]: m for m in run150_changed.named(f"{pack}-image").inputs["members"]}
    differ = [m for m in old if old[m]["content_hash"] != new[m]["content_hash"]]
    assert differ == [r.name]


def test_without_the_placement_file_the_estimate_places_every_model(first_run, fleet150):
    checks.check_model_children(first_run, fleet150[1])
    checks.check_packs(first_run, fleet150[1], fleet150[0])


def _changed(a: Capture, b: Capture) -> set[str]:
    """Names of resources whose inputs differ between two runs (or exist in one only)."""
    by_name_a = {r.name: _canon(r.inputs) for r in a.resources.values()}
    by_name_b = {r.name: _canon(r.inputs) for r in b.resources.values()}
    names = set(by_name_a) | set(by_name_b)
    return {n for n in names if by_name_a.get(n) != by_name_b.get(n)}


def _canon(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, default=str)
