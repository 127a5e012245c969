"""The docker backend against a real container of a real model image (fleet.host.images).

Skipped, with the reason, only when no Docker engine answers. The image is the one
fleet.host.images makes for a small demo model with default settings; other tests build
the same one, so it is usually found under its tag.
"""

from __future__ import annotations

from typing import Any

import pytest

from fleet.host import docker_cli
from fleet.host.images import BuildSettings, build_image
from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from profiler import LoadPlan, ProfileGateError, ProfileOptions, profile
from profiler.docker import LABEL, DockerBackend
from tests.support import by_name, docker_problem

SMALL = "match_probability_1_TAXI_trafficaware"
OPTIONS = ProfileOptions(
    plan=LoadPlan(duration_s=3.0, concurrencies=(1, 8), batch_sizes=(1, 16)),
    ready_timeout_s=300,
    idle_s=1.0,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def image(
    demo_resolved: list[ResolvedModel], demo_registry: Registry, model_store: ModelStore
) -> tuple[ResolvedModel, Any]:
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    small = by_name(demo_resolved, SMALL)
    return small, build_image(small, demo_registry, BuildSettings(store=model_store))


def our_containers(image_ref: str) -> list[str]:
    ps = docker_cli.check(
        "ps", "-aq", "--filter", f"label={LABEL}", "--filter", f"ancestor={image_ref}"
    )
    return ps.split()


def test_docker_backend_measures_the_container_cgroup(image: Any) -> None:
    resolved, built = image
    report = profile(
        resolved,
        None,  # the image holds the model
        backend=DockerBackend(built.image_ref),
        options=OPTIONS,
        content_hash=built.content_hash,
    )
    assert report.backend == "docker" and report.content_hash == built.content_hash
    assert report.memory.source.startswith("cgroup v")
    # the server's Python, BentoML and MLflow: hundreds of MiB, not a few and not gigabytes
    assert 100 <= report.memory.idle_mib <= report.memory.peak_mib <= 2000
    assert report.passed and report.load.errors == 0 and report.load.requests > 0
    assert report.load.invalid_sent == 4 and report.load.invalid_accepted == []
    assert report.recommendation.request_mib >= report.memory.p95_mib
    assert our_containers(built.image_ref) == []  # removed after the run


def test_an_image_that_cannot_start_fails_the_gate(image: Any) -> None:
    resolved, _ = image
    with pytest.raises(ProfileGateError) as info:
        profile(
            resolved,
            None,
            backend=DockerBackend("model-fleet/no-such-image:1"),
            options=OPTIONS,
            content_hash="h",
        )
    assert "no image model-fleet/no-such-image:1" in str(info.value)
