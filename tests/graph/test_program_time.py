"""Preview stays a read: the program itself never builds, pushes, profiles or downloads."""

from __future__ import annotations

import fleet.build
import pulumi

import components.image
import profiler
from components.program import deploy_fleet
from tests.graph.fleetgen import generated_fleet
from tests.graph.harness import IMAGE_TYPE, PROFILE_TYPE, FleetMocks, RecordingMonitor
from tests.graph.test_fleet_200 import stack_config


def _tripwire(*_args, **_kwargs):
    raise AssertionError("work done at program time")


def test_preview_does_no_work(monkeypatch):
    for module, name in [
        (fleet.build, "build_image"),
        (fleet.build, "build_bento"),
        (fleet.build, "push_image"),
        (components.image, "build_image"),
        (components.image, "push_image"),
        (profiler, "profile"),
        (profiler, "profile_fleet"),
    ]:
        monkeypatch.setattr(module, name, _tripwire)
    fleet_spec, resolved = generated_fleet(12)
    mocks = FleetMocks()
    pulumi.runtime.set_mocks(
        mocks,
        project="model-fleet",
        stack="staging",
        preview=True,
        monitor=RecordingMonitor(mocks),
    )

    @pulumi.runtime.test
    def run():
        deploy_fleet(stack_config(), fleet_spec, resolved)

    run()
    kinds = [typ for typ, _ in mocks.inputs]
    assert kinds.count(IMAGE_TYPE) == 12
    assert kinds.count(PROFILE_TYPE) == sum(
        1 for r in resolved if r.model.settings.memory.fixed_mib is None
    )
