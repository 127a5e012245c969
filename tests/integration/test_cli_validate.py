"""`fleet validate`, `fleet routes` and `fleet demo-registry` against the demo registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.cli import main
from fleet.host.demo_registry import MATCH_INPUTS
from fleet.host.environment import child_env
from fleet.resolved import ResolvedModel
from fleet.spec import Fleet

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models.yaml"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def test_validate_prints_one_line_per_route_and_the_experiment(
    demo_uri: str,
    demo_fleet: Fleet,
    demo_resolved: list[ResolvedModel],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", "--models", str(MODELS), "--tracking-uri", demo_uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(demo_fleet.models) + len(demo_fleet.experiments) + 1
    for line, r in zip(out, demo_resolved, strict=False):
        route, name, version, *_ = line.split()
        assert (route, name, version) == (r.model.route, r.name, f"v{r.version}")
        if r.name.startswith("match_probability"):
            assert "(" + ", ".join(f"{n}:double" for n in MATCH_INPUTS) + ")" in line
        elif r.name.startswith("demand_forecast"):
            assert line.endswith("(hour_of_week:long, temperature:double, holiday:boolean)")
        if r.name == "match_probability_2_TAXI_trafficaware":
            assert line.endswith("; shadow match_probability_2_TAXI_trafficaware_challenger v2 10%")
    experiment = out[len(demo_fleet.models)]
    assert experiment.split()[:3] == ["/probability/2/TAXI", "experiment", "[X-Caller-Id]:"]
    assert "match_probability_2_TAXI_trafficaware v1 50%" in experiment
    assert "match_probability_2_TAXI_trafficunaware v1 50%" in experiment
    assert out[-1] == "ok: 11 models, 1 experiments"


def test_validate_with_a_stack_alias(demo_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "validate",
        "--models",
        str(MODELS),
        "--tracking-uri",
        demo_uri,
        "--alias",
        "challenger",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ok: 11 models, 1 experiments"


def test_broken_models_yaml_lists_every_problem(
    tmp_path: Path, demo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "models.yaml"
    broken.write_text(
        "models:\n"
        "  - {name: a, version: 1, alias: champion, endpoint: x}\n"
        "  - {name: b, version: 1, endpoint: x, colour: red}\n"
        "  - {name: c, version: 1, endpoint: y}\n"
        "  - {name: c, version: 2, endpoint: z}\n"
    )
    assert main(["validate", "--models", str(broken), "--tracking-uri", demo_uri]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: 3 problem(s):",
        f"  - {broken}: line 2: model 'a': give either 'version' or 'alias', not both",
        f"  - {broken}: line 3: model 'b': colour: unknown key",
        f"  - {broken}: line 5: model 'c': name: duplicate of the model on line 4",
    ]


def test_models_missing_from_the_registry_are_all_listed(
    tmp_path: Path, demo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = tmp_path / "models.yaml"
    fleet.write_text(
        "- {name: demand_forecast_1, alias: champion, endpoint: ok}\n"
        "- {name: demand_forecast_2, version: 7, endpoint: v}\n"
        "- {name: nobody, alias: champion, endpoint: n}\n"
        "- {name: match_probability_1_PHV_trafficaware, alias: gold, endpoint: g}\n"
    )
    assert main(["validate", "--models", str(fleet), "--tracking-uri", demo_uri]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: 3 problem(s):"
    assert err[1].startswith("  - model 'demand_forecast_2': version 7 not found")
    assert err[2].startswith("  - model 'nobody': alias 'champion' not found")
    assert err[3].startswith("  - model 'match_probability_1_PHV_trafficaware': alias 'gold'")


def test_demo_registry_command_is_idempotent(
    demo_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-registry", "--home", str(demo_home)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"demo registry at sqlite:///{demo_home.resolve() / 'mlflow.db'}"
    assert sum(line.endswith(": already registered") for line in out) == 10
    assert out[-1].startswith("ok: 10 models")


def test_validate_as_a_real_command(demo_uri: str, tmp_path: Path) -> None:
    fleet = Path(sys.executable).parent / "fleet"
    # The documented way to point at a registry; nothing else of ours inherited.
    env = child_env({"MLFLOW_TRACKING_URI": demo_uri})
    (tmp_path / "models.yaml").write_text(MODELS.read_text())
    ok = subprocess.run(
        [str(fleet), "validate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].split()[:3] == [
        "/probability/1/TAXI/trafficaware",
        "match_probability_1_TAXI_trafficaware",
        "v1",
    ]
    assert lines[-1] == "ok: 11 models, 1 experiments"
    (tmp_path / "models.yaml").write_text("- {name: a, endpoint: x}\n")
    bad = subprocess.run(
        [str(fleet), "validate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 1
    assert "models.yaml: line 1: model 'a': give either 'version' or 'alias'" in bad.stderr


def test_routes_prints_the_limits_and_names_a_bad_flag(
    demo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["routes", "--models", str(MODELS), "--tracking-uri", demo_uri]
    assert main([*args, "--backend-calls", "3"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["limits"]["backend_calls"] == 3
    assert main([*args, "--timeout", "0", "--backend-calls", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--timeout: Input should be greater than 0" in err
    assert "--backend-calls: Input should be greater than or equal to 0" in err
