"""`fleet build`: a bento per model, versioned by content hash; a second run builds nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet.cli import main
from fleet.host.environment import child_env
from fleet.host.images import BuildSettings, content_hash
from fleet.host.model_store import ModelStore
from fleet.resolved import ResolvedModel
from tests.support import by_name

MODEL = "demand_forecast_1"
ROOT = Path(__file__).resolve().parents[2]


def fleet_build(store: ModelStore, *args: str) -> subprocess.CompletedProcess[str]:
    """`fleet build ARGS...` as a command whose BentoML store is `store`."""
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", "build", *args],
        cwd=ROOT,
        env=child_env(store.env()),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_build_makes_a_bento_once_per_content_hash(
    model_store: ModelStore, demo_uri: str, demo_resolved: list[ResolvedModel]
) -> None:
    resolved = by_name(demo_resolved, MODEL)
    expected = content_hash(resolved, BuildSettings(store=model_store))
    argv = [MODEL, "--models", str(ROOT / "models.yaml"), "--tracking-uri", demo_uri]

    first = fleet_build(model_store, *argv)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split()[:3] == [MODEL, expected, "built"]

    bento = model_store.bento_dir(resolved.model.k8s_name, expected)
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["labels"]["fleet.content-hash"] == expected
    assert [m["tag"] for m in info["models"]] == [
        f"{resolved.model.k8s_name}:v{resolved.version}-{resolved.run_id[:16]}"
    ]
    pins = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert pins and all("==" in p.split(";")[0] for p in pins if p and not p.startswith("#"))
    assert not any(p.startswith(("pulumi", "pytest")) for p in pins)
    assert (bento / "src" / "fleet" / "serving" / "service.py").is_file()

    again = fleet_build(model_store, *argv)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[:3] == [MODEL, expected, "cached"]


def test_build_names_an_unknown_model(demo_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Refused while resolving, before any store is touched: the command runs in process.
    argv = ["build", "no_such_model", "--models", str(ROOT / "models.yaml")]
    assert main([*argv, "--tracking-uri", demo_uri]) == 1
    assert "no_such_model" in capsys.readouterr().err
