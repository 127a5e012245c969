"""`fleet build`: a bento per model, versioned by content hash; a second run builds nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fleet.build import BuildSettings, content_hash
from fleet.registry import ResolvedModel

from fleet.cli import main

MODEL = "demand_forecast_1"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bentoml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))
    yield home


def test_build_makes_a_bento_once_per_content_hash(
    bentoml_home: Path,
    demo_uri: str,
    demo_resolved: list[ResolvedModel],
    capsys: pytest.CaptureFixture[str],
) -> None:
    resolved = next(r for r in demo_resolved if r.name == MODEL)
    expected = content_hash(resolved, BuildSettings())
    argv = ["build", MODEL, "--models", str(ROOT / "models.yaml"), "--tracking-uri", demo_uri]

    assert main(argv) == 0
    first = capsys.readouterr().out.split()
    assert first[:3] == [MODEL, expected, "built"]

    bento = bentoml_home / "bentos" / resolved.model.k8s_name / expected
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["labels"]["fleet.content-hash"] == expected
    assert [m["tag"] for m in info["models"]] == [
        f"{resolved.model.k8s_name}:v{resolved.version}-{resolved.run_id[:16]}"
    ]
    pins = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert pins and all("==" in p.split(";")[0] for p in pins if p and not p.startswith("#"))
    assert not any(p.startswith(("pulumi", "pytest")) for p in pins)
    assert (bento / "src" / "fleet" / "serving" / "service.py").is_file()

    assert main(argv) == 0
    assert capsys.readouterr().out.split()[:3] == [MODEL, expected, "cached"]


def test_build_names_an_unknown_model(
    bentoml_home: Path, demo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build", "no_such_model", "--models", str(ROOT / "models.yaml")]
    assert main([*argv, "--tracking-uri", demo_uri]) == 1
    assert "no_such_model" in capsys.readouterr().err
