"""The real router image: built like `pulumi up` builds it, run as the Deployment runs it.

The container uses the host's network so that it can reach an echo model-server
stand-in on the host's loopback; its routes config is mounted where the ConfigMap goes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from components.router_image import RouterImageArgs, router_image_inputs
from components.router_manifests import CONFIG_DIR, CONFIG_FILE
from fleet.host.docker_cli import inspect
from fleet.host.images import UID, BuildSettings, build_router_image
from fleet.host.processes import free_port
from tests.support import Servers, container, container_ready, docker_problem

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def router_image() -> str:
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    settings = BuildSettings()
    ref = str(router_image_inputs(RouterImageArgs(settings))["image_ref"])
    build_router_image(ref, settings)
    return ref


@pytest.fixture(scope="module")
def router_url(
    router_image: str, servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    backend = servers.echo().start()
    config_dir = tmp_path_factory.mktemp("routes")
    config = {
        "routes": [
            {
                "path": "/probability/1/TAXI/trafficaware",
                "model": "m_taxi",
                "version": 3,
                "backend": f"{backend.url}/m_taxi",
                "inputs": [{"name": "x", "type": "double", "required": True}],
            }
        ]
    }
    (config_dir / CONFIG_FILE).write_text(json.dumps(config))
    config_dir.chmod(0o755)
    (config_dir / CONFIG_FILE).chmod(0o644)
    port = free_port()
    run = ["--network", "host", "-v", f"{config_dir}:{CONFIG_DIR}:ro", router_image]
    # The Deployment's args (components/router_manifests.py), on a free host port.
    run += ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--host", "127.0.0.1", "--port", str(port)]
    with container(*run) as cid:
        url = f"http://127.0.0.1:{port}"
        container_ready(cid, url, timeout_s=120)
        yield url


def test_the_router_image_runs_as_non_root_with_its_entrypoint(router_image: str) -> None:
    info = inspect(router_image)
    assert info is not None
    assert info["Config"]["User"] == f"{UID}:{UID}"
    assert info["Config"]["Entrypoint"] == ["/usr/bin/python3", "-m", "fleet.router"]
    assert info["Config"]["Labels"]["fleet.component"] == "router"


def test_the_router_container_routes_validates_and_serves_its_docs(router_url: str) -> None:
    path = "/probability/1/TAXI/trafficaware"
    ok = httpx.post(router_url + path, json=[{"x": 1.5}, {"x": 2.5}], timeout=10)
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-model"] == "m_taxi" and ok.headers["x-model-version"] == "3"
    body = ok.json()
    assert [p["record"]["x"] for p in body["predictions"]] == [1.5, 2.5]
    bad = httpx.post(router_url + path, json={"y": 1.0}, timeout=10)
    assert bad.status_code == 422
    assert {p["field"] for p in bad.json()["problems"]} == {"x", "y"}
    assert path in httpx.get(router_url + "/openapi.json", timeout=10).json()["paths"]
    assert "fleet_router_requests" in httpx.get(router_url + "/metrics", timeout=10).text


def test_the_router_image_is_reused_when_nothing_changed(router_image: str) -> None:
    settings = BuildSettings()
    again = build_router_image(router_image, settings)
    assert again.built is False
    info = inspect(router_image)
    assert info is not None and again.image_id == info["Id"]
