"""Preview stays a read: the program itself never builds, pushes, profiles or downloads."""

from __future__ import annotations

import dataclasses

import pytest

import components.image
import components.router_image
import fleet.host.docker_cli
import fleet.host.images
import profiler
from components.config import RouterConfig
from components.program import deploy_fleet
from fleet.host.model_store import ModelStore
from tests.graph.fleetgen import generated_fleet
from tests.graph.harness import (
    IMAGE_TYPE,
    PROFILE_TYPE,
    ROUTER_IMAGE_TYPE,
    run_program,
    stack_config,
)


def _tripwire(*_args, **_kwargs):
    raise AssertionError("work done at program time")


@pytest.mark.parametrize("router_image", ["given", "built"])
def test_preview_does_no_work(monkeypatch, router_image):
    for module, name in [
        (fleet.host.images, "build_image"),
        (fleet.host.images, "build_bento"),
        (fleet.host.images, "build_router_image"),
        (fleet.host.docker_cli, "push"),
        (fleet.host.docker_cli, "run"),  # any Docker call at all
        (components.image, "build_image"),
        (components.router_image, "build_router_image"),
        (ModelStore, "import_model"),  # the model download
        (profiler, "profile"),
        (profiler, "profile_fleet"),
    ]:
        monkeypatch.setattr(module, name, _tripwire)
    fleet_spec, resolved = generated_fleet(12)

    def body() -> None:
        cfg = stack_config()
        if router_image == "built":  # no image given: the program makes a RouterImage
            cfg = dataclasses.replace(cfg, router=RouterConfig(replicas=3))
        deploy_fleet(cfg, fleet_spec, resolved)

    cap = run_program(body, stack="staging", preview=True)
    assert len(cap.of_type(IMAGE_TYPE)) == 12
    assert len(cap.of_type(PROFILE_TYPE)) == sum(
        1 for r in resolved if r.model.settings.memory.fixed_mib is None
    )
    assert len(cap.of_type(ROUTER_IMAGE_TYPE)) == (1 if router_image == "built" else 0)
