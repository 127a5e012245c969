"""Shared fixtures: a real MLflow registry with the demo models, made once per session,
one BentoML model store for the session's model servers and builds, and the test OCI
registry (when FLEET_TEST_REGISTRY names one: .ci/run starts it).

Nothing here sets environment variables: the registry and the store are passed to the
code under test explicitly (`Registry`, `ModelStore`, `BuildSettings(store=...)`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.host.demo_registry import create_demo_registry
from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry, local_tracking_uri
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet
from fleet.specfile import load_fleet
from tests.support import (
    OciRegistry,
    Servers,
    docker_problem,
    images_removed_after,
    oci_registry,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def images_cleaned_up() -> Iterator[None]:
    """The images the session built are removed at its end (`images_removed_after`);
    FLEET_TEST_KEEP_IMAGES=1 keeps them, to look at after a run."""
    if os.environ.get("FLEET_TEST_KEEP_IMAGES") == "1":
        yield
        return
    with images_removed_after():
        yield


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a demo registry (sqlite + artifacts), trained once per session.

    Set FLEET_TEST_DEMO_HOME to reuse one across runs while developing.
    """
    reuse = os.environ.get("FLEET_TEST_DEMO_HOME")
    home = Path(reuse) if reuse else tmp_path_factory.mktemp("demo-registry")
    home.mkdir(parents=True, exist_ok=True)
    create_demo_registry(Registry(local_tracking_uri(home)), home / "artifacts")
    return home


@pytest.fixture(scope="session")
def demo_uri(demo_home: Path) -> str:
    """Tracking URI of the demo registry."""
    return local_tracking_uri(demo_home)


@pytest.fixture(scope="session")
def demo_registry(demo_uri: str) -> Registry:
    """The demo registry, as the host layer reads it."""
    return Registry(demo_uri)


@pytest.fixture(scope="session")
def demo_fleet() -> Fleet:
    """The repository's models.yaml."""
    return load_fleet(ROOT / "models.yaml")


@pytest.fixture(scope="session")
def demo_resolved(demo_fleet: Fleet, demo_registry: Registry) -> list[ResolvedModel]:
    """The repository's fleet resolved against the demo registry."""
    return demo_registry.resolve(demo_fleet)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """One BentoML store for the session: models imported once, shared by every test."""
    return ModelStore(tmp_path_factory.mktemp("bentoml").resolve())


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The child processes of one test module (`tests.support.Servers`), all stopped at
    its end; their logs in a temporary folder."""
    with Servers(tmp_path_factory.mktemp("servers")) as started:
        yield started


@pytest.fixture(scope="session")
def image_registry() -> OciRegistry:
    """The test OCI registry with htpasswd auth, and a Docker engine to push to it; the
    test is skipped, with the reason, when either is missing."""
    problem = docker_problem()
    if problem:
        pytest.skip(problem)
    found = oci_registry()
    if isinstance(found, str):
        pytest.skip(found)
    return found
