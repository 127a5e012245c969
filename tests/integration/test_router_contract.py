"""The router's OpenAPI document holds against an outside checker: Schemathesis.

`python -m fleet.router` serves a routes config whose models cover every column type the
registry can produce (long, integer, float, double, boolean, string; required and
optional), and an experiment whose variants take different columns; the echo stand-in
plays the model servers. Schemathesis reads `/openapi.json` and runs every route through
its examples, coverage and fuzzing phases with all of its checks: a schema-valid request
must be taken (200), a schema-violating one refused (4xx), and every answer must match
what the document says (status, content type, body schema, headers).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import Servers

pytestmark = pytest.mark.slow

TYPES = ["long", "integer", "float", "double", "boolean", "string"]
EVERY_TYPE = [{"name": f"{t}_col", "type": t, "required": True} for t in TYPES]
EVERY_TYPE_OPTIONAL = [{"name": f"{t}_opt", "type": t, "required": False} for t in TYPES]
MAX_EXAMPLES = 200
"""Fuzzing examples per route: the whole run takes about 25 s on these machines."""


def routes_config(backend: str) -> dict[str, Any]:
    def route(path: str, model: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        backend_url = f"{backend}/{model}"
        return {
            "path": path,
            "model": model,
            "version": 1,
            "backend": backend_url,
            "inputs": inputs,
        }

    return {
        "limits": {"max_batch": 5, "timeout_s": 5.0},
        "routes": [
            route("/every/required", "required", EVERY_TYPE),
            route("/every/optional", "optional", EVERY_TYPE_OPTIONAL),
            route("/every/mixed", "mixed", EVERY_TYPE[:3] + EVERY_TYPE_OPTIONAL[3:]),
            route("/every/few", "few", [EVERY_TYPE[0], EVERY_TYPE_OPTIONAL[3]]),
        ],
        "experiments": [
            {
                "path": "/every",
                "sticky_header": "X-Caller-Id",
                "variants": [{"model": "mixed", "weight": 60}, {"model": "few", "weight": 40}],
            }
        ],
    }


def test_every_route_keeps_the_openapi_contract(servers: Servers, tmp_path: Path) -> None:
    backend = servers.echo().start()
    router = servers.router(routes_config(backend.url), tmp_path / "routes.json").start()
    # The CLI, as a user runs it: its pytest plugin does not run under pytest 9.
    argv = [sys.executable, "-m", "schemathesis.cli", "run", f"{router.url}/openapi.json"]
    argv += ["--checks", "all", "--phases", "examples,coverage,fuzzing"]
    argv += ["--max-examples", str(MAX_EXAMPLES), "--no-color", "--report-dir", str(tmp_path)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    report = run.stdout[-20000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    operations = re.search(r"Tested: (\d+)", report)
    assert operations is not None, report
    # Every route, the experiment and the ops routes (healthz, readyz, metrics).
    assert int(operations.group(1)) == 5 + 3, report
    assert "No issues found" in report, report
