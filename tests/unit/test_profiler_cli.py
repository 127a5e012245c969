"""The profiler's command line (`fleet profile`, also `python -m profiler`): argument
errors exit 2 before anything starts; problems a person must fix are reported by the
CLI's one handler (`fleet.cli.report`) and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.cli import main, report
from fleet.errors import SpecError
from profiler import ProfileGateError

ROOT = Path(__file__).resolve().parents[2]


def profile(*args: str) -> int:
    return main(["profile", *args])


def test_models_or_all_must_be_given(capsys: pytest.CaptureFixture[str]) -> None:
    assert profile() == 2
    assert "name the models to profile, or pass --all" in capsys.readouterr().err


def test_numbers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert profile("--all", "--parallel", "0", "--duration", "-1") == 2
    assert "--duration, --parallel: must be positive" in capsys.readouterr().err


def test_lists_of_integers_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        profile("--all", "--concurrency", "1,x")
    assert info.value.code == 2
    assert "'1,x' is not a comma-separated list of integers" in capsys.readouterr().err


def test_an_unknown_model_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("- {name: a, version: 1, endpoint: a}\n")
    assert profile("nope", "--models", str(models), "--tracking-uri", "sqlite:///x.db") == 1
    err = capsys.readouterr().err
    assert "no model named 'nope' in the fleet" in err
    assert err.splitlines()[:2] == [
        "error: 1 problem(s):",
        "  - no model named 'nope' in the fleet",
    ]


def test_python_m_profiler_is_fleet_profile() -> None:
    """`python -m profiler ARGS` runs `fleet profile ARGS`: same checks, same exit code."""
    proc = subprocess.run(
        [sys.executable, "-m", "profiler", "--all", "--parallel", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--parallel: must be positive" in proc.stderr


def test_report_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    report(SpecError(["models.yaml:3: model 'a': bad", "models.yaml:7: model 'b': worse"]))
    assert capsys.readouterr().err.splitlines() == [
        "error: 2 problem(s):",
        "  - models.yaml:3: model 'a': bad",
        "  - models.yaml:7: model 'b': worse",
    ]


def test_report_prints_the_gate_message_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    """A ProfileGateError has a message of its own (header, reasons, log tail)."""
    exc = ProfileGateError("m", ["predictions failed: 3 of 3"], log_tail=["Traceback ..."])
    report(exc)
    assert capsys.readouterr().err.splitlines() == [
        "error: model 'm' failed the profile gate:",
        "  - predictions failed: 3 of 3",
        "  last lines of the server log:",
        "    | Traceback ...",
    ]
