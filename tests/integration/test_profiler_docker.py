"""The docker backend against a real container of a real model image (fleet.host.images).

Skipped, with the reason, only when no Docker engine answers. The image is the one
fleet.host.images makes for a small demo model with default settings; other tests build
the same one, so it is usually found under its tag. The sandbox is checked on the
running container, as the engine reports it (`docker inspect`), not on our arguments.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from fleet.host import docker_cli
from fleet.host.images import BuildSettings, build_image
from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.serving.config import ENV_MODEL_DIR, ENV_MODEL_NAME, ENV_PACK
from profiler import LoadPlan, ProfileGateError, ProfileOptions, profile
from profiler.docker import LABEL, ContainerServer, DockerBackend
from profiler.memory import MIB
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


class Inspected(DockerBackend):
    """The docker backend, keeping `docker inspect` of each container once it has started."""

    def __init__(self, image: str) -> None:
        super().__init__(image)
        self.seen: list[dict[str, Any]] = []

    def start(
        self, resolved: ResolvedModel, registry: Registry | None, copies: int = 1
    ) -> ContainerServer:
        server = super().start(resolved, registry, copies)
        self.seen += json.loads(docker_cli.check("inspect", server.container_id))
        return server


def with_ceiling(resolved: ResolvedModel, ceiling_mib: int) -> ResolvedModel:
    settings = resolved.model.settings
    memory = settings.memory.model_copy(update={"ceiling_mib": ceiling_mib})
    model = resolved.model.model_copy(
        update={"settings": settings.model_copy(update={"memory": memory})}
    )
    return dataclasses.replace(resolved, model=model)


def test_docker_backend_measures_the_container_cgroup(image: Any) -> None:
    resolved, built = image
    backend = Inspected(built.image_ref)
    report = profile(
        resolved,
        None,  # the image holds the model
        backend=backend,
        options=OPTIONS,
        content_hash=built.content_hash,
    )
    # the sandbox, on the container that ran
    [inspected] = backend.seen
    assert inspected["State"]["Running"] is True
    host = inspected["HostConfig"]
    assert host["NetworkMode"] not in ("host", "none", "")
    [(container_port, bindings)] = host["PortBindings"].items()
    assert container_port == "3000/tcp"
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    ports = inspected["NetworkSettings"]["Ports"][container_port]
    assert {p["HostIp"] for p in ports} == {"127.0.0.1"}
    ceiling = resolved.model.settings.memory.ceiling_mib
    assert host["Memory"] == ceiling * MIB and host["MemorySwap"] == host["Memory"]
    assert "ALL" in host["CapDrop"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert set(host["Tmpfs"]) == {"/tmp"} and "size=" in host["Tmpfs"]["/tmp"]
    assert host["PidsLimit"] and host["PidsLimit"] > 0
    user = inspected["Config"]["User"]
    assert user and user.split(":")[0] not in ("0", "root")
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


def test_a_model_above_its_ceiling_is_oom_killed_and_the_gate_says_so(image: Any) -> None:
    # The container's memory limit is the ceiling: at 64 MiB the server cannot even load.
    resolved, built = image
    with pytest.raises(ProfileGateError) as info:
        profile(
            with_ceiling(resolved, 64),
            None,
            backend=DockerBackend(built.image_ref),
            options=OPTIONS,
            content_hash=built.content_hash,
        )
    message = str(info.value)
    assert f"model '{resolved.name}'" in message
    [problem] = info.value.problems
    assert "out of memory" in problem and "OOM" in problem
    assert "ceiling of 64 MiB (memory.ceiling_mib)" in problem
    assert our_containers(built.image_ref) == []


def test_docker_backend_measures_the_pack_of_the_image_twice(image: Any) -> None:
    # the same image as a pack server: FLEET_PACK from the image's own settings, the model
    # under its name and its twin's, the memory limit twice the ceiling
    resolved, built = image
    backend = Inspected(built.image_ref)
    report = profile(
        resolved,
        None,
        backend=backend,
        options=OPTIONS,
        content_hash=built.content_hash,
        pack=True,
    )
    single, twin = backend.seen
    assert not any(e.startswith(f"{ENV_PACK}=") for e in single["Config"]["Env"])
    [packed] = [e.split("=", 1)[1] for e in twin["Config"]["Env"] if e.startswith(f"{ENV_PACK}=")]
    entries = json.loads(packed)
    assert [e[ENV_MODEL_NAME] for e in entries] == [SMALL, f"{SMALL}--twin"]
    assert entries[0][ENV_MODEL_DIR] == entries[1][ENV_MODEL_DIR]
    ceiling = resolved.model.settings.memory.ceiling_mib
    assert twin["HostConfig"]["Memory"] == 2 * ceiling * MIB
    assert report.passed and report.load.errors == 0
    pack = report.pack
    assert pack is not None
    assert 0 <= pack.marginal_p95_mib < 15
    p95 = report.memory.p95_mib
    assert pack.baseline_p95_mib == pytest.approx(p95 - pack.marginal_p95_mib, abs=0.15)
    assert pack.source.startswith("cgroup v")
    assert pack.baseline_p95_mib >= 100
    assert our_containers(built.image_ref) == []
