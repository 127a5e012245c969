"""The profiler's command line: argument errors exit 2 before anything starts."""

from __future__ import annotations

import pytest
from profiler.cli import main

from fleet.cli import main as fleet_main


def test_models_or_all_must_be_given(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "name the models to profile, or pass --all" in capsys.readouterr().err


def test_numbers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet_main(["profile", "--all", "--parallel", "0", "--duration", "-1"]) == 2
    assert "--duration, --parallel: must be positive" in capsys.readouterr().err


def test_lists_of_integers_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--all", "--concurrency", "1,x"])
    assert info.value.code == 2
    assert "'1,x' is not a comma-separated list of integers" in capsys.readouterr().err


def test_an_unknown_model_is_named(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("- {name: a, version: 1, endpoint: a}\n")
    assert main(["nope", "--models", str(models), "--tracking-uri", "sqlite:///x.db"]) == 1
    assert "no model named 'nope' in the fleet" in capsys.readouterr().err
