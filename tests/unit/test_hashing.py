"""The content hash: stable for the same inputs, new for any change that reaches the image."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from fleet.hashing import MODEL_IMAGE_CODE, image_files
from fleet.host.images import BuildSettings, content_hash, image_ref
from fleet.host.requirements import exported_requirements
from fleet.resolved import ResolvedModel
from fleet.schema import Column
from fleet.specfile import parse_fleet

ROOT = Path(__file__).resolve().parents[2]

FLEET = """
- name: match_probability_1_TAXI_trafficaware
  version: 3
  endpoint: probability
  parameters: [1, TAXI, trafficaware]
"""


@pytest.fixture
def resolved() -> ResolvedModel:
    model = parse_fleet(FLEET).resolved_models()[0]
    return ResolvedModel(
        model=model,
        version=3,
        model_uri="models:/match_probability_1_TAXI_trafficaware/3",
        run_id="0123456789abcdef0123456789abcdef",
        source="file:///artifacts/model",
        inputs=[Column("route_decision_score", "double"), Column("backtoback", "double")],
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the hash reads: pyproject.toml, uv.lock and the model image's code."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tmp_path / name)
    for rel in image_files(ROOT, MODEL_IMAGE_CODE):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_the_same_inputs_give_the_same_hash(resolved: ResolvedModel, project: Path) -> None:
    settings = BuildSettings(project_root=project)
    first = content_hash(resolved, settings)
    assert re.fullmatch(r"[0-9a-f]{24}", first)
    assert content_hash(resolved, settings) == first
    # where the project lives is not part of what the image holds
    assert content_hash(resolved, BuildSettings(project_root=ROOT)) == first


def test_the_model_version_and_run_change_the_hash(resolved: ResolvedModel, project: Path) -> None:
    settings = BuildSettings(project_root=project)
    base = content_hash(resolved, settings)
    v4 = replace(resolved, version=4, model_uri="models:/match_probability_1_TAXI_trafficaware/4")
    assert content_hash(v4, settings) != base
    assert content_hash(replace(resolved, run_id="f" * 32), settings) != base


def test_the_service_code_changes_the_hash(resolved: ResolvedModel, project: Path) -> None:
    settings = BuildSettings(project_root=project)
    base = content_hash(resolved, settings)
    batcher = project / "fleet" / "serving" / "batcher.py"
    batcher.write_text(batcher.read_text() + "\n# a change\n")
    assert content_hash(resolved, settings) != base


def test_a_pinned_requirement_changes_the_hash(resolved: ResolvedModel, project: Path) -> None:
    settings = BuildSettings(project_root=project)
    base = content_hash(resolved, settings)
    pins = exported_requirements(project)
    version = re.search(r"^pyyaml==(\S+)$", pins, re.M)
    assert version is not None
    lock = project / "uv.lock"
    text = lock.read_text()
    entry = f'name = "pyyaml"\nversion = "{version.group(1)}"'
    assert entry in text
    # the version in the entry and in its file names (uv checks they agree)
    text = text.replace(entry, 'name = "pyyaml"\nversion = "6.0.99"')
    lock.write_text(text.replace(f"pyyaml-{version.group(1)}", "pyyaml-6.0.99"))
    assert "pyyaml==6.0.99" in exported_requirements(project)
    assert content_hash(resolved, settings) != base


def test_the_pins_hold_main_dependencies_only_and_pinned(project: Path) -> None:
    pins = exported_requirements(project).splitlines()
    names = {p.split("==")[0] for p in pins}
    assert {"bentoml", "mlflow", "scikit-learn", "pandas"} <= names
    assert not names & {"pulumi", "pulumi-kubernetes", "pytest", "mypy", "ruff", "hypothesis"}
    assert all("==" in p.split(";")[0] for p in pins)


def test_build_settings_change_the_hash(
    resolved: ResolvedModel, project: Path, tmp_path: Path
) -> None:
    settings = BuildSettings(project_root=project)
    base = content_hash(resolved, settings)
    ca = tmp_path / "extra.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    changed = [
        replace(settings, base_image="example.org/python:3.11-slim"),
        replace(settings, ca_bundle=ca),
        replace(settings, python_platform="aarch64-manylinux_2_36"),
    ]
    hashes = {content_hash(resolved, s) for s in changed}
    assert base not in hashes
    assert len(hashes) == len(changed)
    batching = resolved.model.settings.batching.model_copy(update={"max_batch_size": 8})
    model = resolved.model.model_copy(
        update={"settings": resolved.model.settings.model_copy(update={"batching": batching})}
    )
    assert content_hash(replace(resolved, model=model), settings) != base
    # the registry only names the image; it does not change what is in it
    assert content_hash(resolved, replace(settings, registry="registry.example.org/x")) == base


def test_image_ref_is_registry_k8s_name_and_hash(resolved: ResolvedModel, project: Path) -> None:
    settings = BuildSettings(registry="localhost:5000/fleet", project_root=project)
    ref = image_ref(resolved, settings)
    assert ref == (
        f"localhost:5000/fleet/{resolved.model.k8s_name}:{content_hash(resolved, settings)}"
    )
