"""`__main__.py` itself under mocks: a problem a person must fix ends it with
`pulumi.RunError` listing the problems (no traceback), and the fleet's router limits,
overridden by the stack, reach the router's routes config."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pulumi
import pytest

from tests.graph.harness import run_program

ROOT = Path(__file__).resolve().parents[2]


def config(demo_uri: str, models: Path, **extra: str) -> dict[str, str]:
    return {
        "fleet:trackingUri": demo_uri,
        "fleet:registry": "localhost:5000/fleet",
        "fleet:modelsFile": str(models),
        "fleet:router": json.dumps({"image": "localhost:5000/fleet/router:dev"}),
        "fleet:ingress": json.dumps({"host": "fleet.localtest.me"}),
        "fleet:push": "false",
        **extra,
    }


def program() -> None:
    runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")


def test_a_bad_models_yaml_ends_the_program_with_its_problems(
    tmp_path: Path, demo_uri: str
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("- name: m\n  version: 0\n  endpoint: 'a b'\n")
    with pytest.raises(pulumi.RunError) as caught:
        run_program(program, config=config(demo_uri, models))
    text = str(caught.value)
    assert "problem(s)" in text and "line 2" in text and "model 'm'" in text
    assert "Traceback" not in text


def test_a_model_missing_from_the_registry_is_named(tmp_path: Path, demo_uri: str) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("- {name: no_such_model, version: 1, endpoint: x}\n")
    with pytest.raises(pulumi.RunError, match="model 'no_such_model'"):
        run_program(program, config=config(demo_uri, models))


def test_a_bad_router_limit_in_the_stack_is_named(tmp_path: Path, demo_uri: str) -> None:
    with pytest.raises(pulumi.RunError, match=r"fleet:routerLimits\.backend_calls"):
        run_program(
            program,
            config=config(
                demo_uri,
                ROOT / "models.yaml",
                **{"fleet:routerLimits": json.dumps({"backend_calls": -1})},
            ),
        )


def test_router_limits_reach_the_routes_config(tmp_path: Path, demo_uri: str) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  - {name: demand_forecast_1, version: 1, endpoint: demand, parameters: [1]}\n"
        "router: {backend_calls: 5, max_batch: 100}\n"
    )
    capture = run_program(
        program,
        config=config(demo_uri, models, **{"fleet:routerLimits": json.dumps({"max_batch": 7})}),
    )
    routes = [r for r in capture.k8s() if r.typ == "kubernetes:core/v1:ConfigMap"]
    data = [json.loads(v) for r in routes for v in (r.inputs.get("data") or {}).values()]
    limits = [d["limits"] for d in data if isinstance(d, dict) and "limits" in d]
    assert limits == [{**limits[0], "backend_calls": 5, "max_batch": 7}]
