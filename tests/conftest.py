"""Shared fixtures: a real MLflow registry with the demo models, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fleet.demo import create_demo_registry
from fleet.registry import ResolvedModel, resolve_fleet

from fleet.spec import Fleet, load_fleet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a demo registry (sqlite + artifacts), trained once per session.

    Set FLEET_TEST_DEMO_HOME to reuse one across runs while developing.
    """
    reuse = os.environ.get("FLEET_TEST_DEMO_HOME")
    home = Path(reuse) if reuse else tmp_path_factory.mktemp("demo-registry")
    home.mkdir(parents=True, exist_ok=True)
    create_demo_registry(tracking_uri_for(home), home / "artifacts", progress=lambda _: None)
    return home


def tracking_uri_for(home: Path) -> str:
    return f"sqlite:///{home.resolve() / 'mlflow.db'}"


@pytest.fixture(scope="session")
def demo_uri(demo_home: Path) -> str:
    """Tracking URI of the demo registry."""
    return tracking_uri_for(demo_home)


@pytest.fixture(scope="session")
def demo_fleet() -> Fleet:
    """The repository's models.yaml."""
    return load_fleet(ROOT / "models.yaml")


@pytest.fixture(scope="session")
def demo_resolved(demo_fleet: Fleet, demo_uri: str) -> list[ResolvedModel]:
    """The repository's fleet resolved against the demo registry."""
    return resolve_fleet(demo_fleet, demo_uri)
