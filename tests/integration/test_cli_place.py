"""`fleet place` on the demo registry: real pack measurements, a file that keeps models put."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.cli import main
from fleet.host.registry import Registry
from fleet.packing import read_placement
from fleet.specfile import load_fleet
from profiler.run import content_hash_of
from tests.support import by_name

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SMALL = ("match_probability_1_TAXI_trafficaware", "demand_forecast_1")
LATER = "match_probability_2_PHV_trafficunaware"


def models_yaml(path: Path, names: list[str]) -> Path:
    entries = [
        {"name": n, "version": 1, "endpoint": "e", "parameters": [i]} for i, n in enumerate(names)
    ]
    entries.append(
        {"name": "demand_forecast_2", "version": 1, "endpoint": "big", "dedicated": True}
    )
    doc = {"packing": {"enabled": True, "memory_budget_mib": 1024}, "models": entries}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def place(models: Path, demo_uri: str, cache: Path, *more: str) -> int:
    argv = ["place", "--models", str(models), "--tracking-uri", demo_uri, "--duration", "1"]
    return main([*argv, "--cache-dir", str(cache), *more])


def test_place_measures_packed_models_and_keeps_them_put(
    tmp_path: Path,
    demo_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    models = models_yaml(tmp_path / "models.yaml", list(SMALL))
    cache = tmp_path / "cache"
    assert place(models, demo_uri, cache, "--check") == 1  # no file yet: out of date
    assert place(models, demo_uri, cache) == 0
    out = capsys.readouterr().out
    assert "measuring 2 of 2 packed models" in out
    placed = read_placement(tmp_path / "placement.yaml")
    assert placed.placement.packs == {"pack-0": tuple(sorted(SMALL))}
    resolved = Registry(demo_uri).resolve(load_fleet(models))
    for name in SMALL:
        size = placed.sizes[name]
        # Measured for the model's current image; a small model adds little to a pack.
        assert size.content_hash == content_hash_of(by_name(resolved, name))
        assert 0 <= size.marginal_p95_mib < 15
        assert 50 < size.baseline_p95_mib < 400
    # The dedicated model is neither measured nor placed.
    assert "demand_forecast_2" not in placed.sizes

    # Up to date: nothing measured again.
    assert place(models, demo_uri, cache, "--check") == 0
    assert "measuring" not in capsys.readouterr().out

    # One more model: only it is measured; the others stay in their pack.
    models_yaml(models, [*SMALL, LATER])
    assert place(models, demo_uri, cache) == 0
    out = capsys.readouterr().out
    assert "measuring 1 of 3 packed models" in out
    assert f"new: {LATER} -> pack-0" in out
    again = read_placement(tmp_path / "placement.yaml")
    assert again.placement.packs == {"pack-0": tuple(sorted([*SMALL, LATER]))}
    assert {n: again.sizes[n] for n in SMALL} == {n: placed.sizes[n] for n in SMALL}


def test_place_with_packing_off_says_so(
    tmp_path: Path, demo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("- {name: demand_forecast_1, version: 1, endpoint: d}\n")
    assert place(models, demo_uri, tmp_path / "cache") == 1
    assert "packing is off" in capsys.readouterr().err
    assert not (tmp_path / "placement.yaml").exists()
