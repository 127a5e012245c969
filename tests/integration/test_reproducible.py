"""Reproducible images: the same inputs give the same layers, on any runner, at any time.

A runner differs from another in where it builds (the build folder, the BentoML store),
when (file times, BentoML's creation stamps) and in its caches. Each layer of a model
image is built twice here under such differences and must come out byte for byte the
same, so staging and production push one digest for one content hash.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fleet.host import image_layers, requirements
from fleet.host.images import DEPS_DIR, BuildSettings, bento_layer, build_bento
from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from tests.support import by_name

ROOT = Path(__file__).resolve().parents[2]


def test_a_layer_does_not_depend_on_file_times_or_owners(tmp_path: Path) -> None:
    for name in ("a", "b"):
        tree = tmp_path / name / "app"
        shutil.copytree(ROOT / "fleet" / "router", tree)
        if name == "b":
            for path in tree.rglob("*"):
                os.utime(path, (1_000_000, 1_000_000))
    first = image_layers.write_layer(tmp_path / "a.tar", {"opt/app": tmp_path / "a" / "app"})
    second = image_layers.write_layer(tmp_path / "b.tar", {"opt/app": tmp_path / "b" / "app"})
    assert first.diff_id == second.diff_id
    (tmp_path / "b" / "app" / "config.py").write_text("# changed\n")
    third = image_layers.write_layer(tmp_path / "c.tar", {"opt/app": tmp_path / "b" / "app"})
    assert third.diff_id != first.diff_id


def test_the_bento_layer_is_the_same_from_two_stores(
    tmp_path: Path, demo_registry: Registry, demo_resolved: list[ResolvedModel]
) -> None:
    """Two stores, two builds seconds apart (BentoML stamps both with their time)."""
    model = by_name(demo_resolved, "demand_forecast_1")
    layers = []
    for name in ("first", "second"):
        settings = BuildSettings(store=ModelStore((tmp_path / name / "store").resolve()))
        bento = build_bento(model, demo_registry, settings)
        assert bento.built
        work = tmp_path / name / "work"
        work.mkdir()
        layers.append(bento_layer(model, bento, settings, work).diff_id)
    assert layers[0] == layers[1]


@pytest.mark.slow
def test_the_packages_layer_is_the_same_from_two_build_folders(tmp_path: Path) -> None:
    """Installed twice, in folders of different names, with bytecode: one diff id."""
    pins = requirements.exported_requirements(ROOT)
    ids = []
    for name in ("runner-one", "another-runner"):
        target = tmp_path / name / "deps"
        requirements.install(pins, target, BuildSettings().python_platform, DEPS_DIR)
        assert next(target.glob("bentoml/__pycache__/*.pyc"), None) is not None
        ids.append(image_layers.write_layer(tmp_path / f"{name}.tar", {"opt/deps": target}).diff_id)
        shutil.rmtree(target)
    assert ids[0] == ids[1]
