"""The profiler against real model servers (BentoML, process backend) on the demo registry.

The two demo models are profiled once per module, side by side; the tests read the
reports. Load is kept to a few seconds per model.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet.registry import ResolvedModel

from fleet.cli import main as fleet_main
from profiler import LoadPlan, Outcome, ProfileCache, ProfileOptions, profile_fleet

SMALL = "match_probability_1_TAXI_trafficaware"
BIG = "demand_forecast_2"  # a ~200 MB random forest
OPTIONS = ProfileOptions(
    plan=LoadPlan(duration_s=3.0, concurrencies=(1, 8), batch_sizes=(1, 16)),
    ready_timeout_s=300,
    idle_s=1.0,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A BentoML model store of this module's own."""
    home = tmp_path_factory.mktemp("profiler-bentoml")
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        yield home
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


@pytest.fixture(scope="module")
def profiled(
    bentoml_home: Path,
    demo_resolved: list[ResolvedModel],
    demo_uri: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Outcome], ProfileCache, list[str]]:
    cache = ProfileCache(tmp_path_factory.mktemp("profiles"))
    models = [r for r in demo_resolved if r.name in (SMALL, BIG)]
    lines: list[str] = []
    outcomes = profile_fleet(
        models, demo_uri, options=OPTIONS, parallel=2, cache=cache, progress=lines.append
    )
    return {o.model: o for o in outcomes}, cache, lines


def test_the_big_model_measures_its_extra_size_and_gets_more_memory(profiled: Any) -> None:
    outcomes, _, lines = profiled
    small, big = outcomes[SMALL], outcomes[BIG]
    assert small.status == big.status == "profiled", "\n".join(lines)
    assert small.report is not None and big.report is not None
    assert big.report.memory.idle_mib - small.report.memory.idle_mib >= 150
    assert big.report.memory.p95_mib - small.report.memory.p95_mib >= 150
    assert big.recommendation is not None and small.recommendation is not None
    assert big.recommendation.request_mib >= small.recommendation.request_mib + 150
    assert big.recommendation.limit_mib > small.recommendation.limit_mib
    # a BentoML server is a few hundred MiB of Python, not a few MiB and not gigabytes
    assert 100 <= small.report.memory.idle_mib <= 2000


def test_reports_hold_latency_throughput_and_refused_invalid_requests(profiled: Any) -> None:
    outcomes, cache, _ = profiled
    for name in (SMALL, BIG):
        report = outcomes[name].report
        assert report.passed and report.load.errors == 0
        assert report.load.invalid_sent == 4 and report.load.invalid_accepted == []
        assert report.load.requests >= len(report.load.phases) == 4
        assert report.load.p50_ms is not None and report.load.p99_ms >= report.load.p50_ms
        assert report.load.req_per_s > 0
        assert report.memory.source == "pss (process tree)"
        assert report.memory.idle_mib <= report.memory.peak_mib
        assert cache.get(report.content_hash) == report


def test_a_second_run_comes_from_the_cache(
    profiled: Any, demo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes, cache, _ = profiled
    argv = ["profile", SMALL, BIG, "--tracking-uri", demo_uri, "--cache-dir", str(cache.root)]
    assert fleet_main(argv) == 0
    out = capsys.readouterr().out
    assert f"{SMALL} v1 (cached)" in out and f"{BIG} v1 (cached)" in out
    request = outcomes[BIG].recommendation.request_mib
    assert f"{request}Mi" in out  # the summary table


def register_broken_model(uri: str, artifacts: Path) -> None:
    """A pyfunc that raises on predict, registered as `broken_model` version 1 at `uri`."""
    import cloudpickle
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    class Broken(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            raise ValueError("this model is broken on purpose")

    # The class travels inside the model, as from a notebook; the server cannot import tests.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        x = pd.DataFrame({"distance": [1.0, 2.0], "hour": np.array([3, 4], dtype="int64")})
        exp = mlflow.MlflowClient(uri).create_experiment("broken", artifacts.as_uri())
        with mlflow.start_run(experiment_id=exp):
            mlflow.pyfunc.log_model(
                name="model",
                python_model=Broken(),
                signature=infer_signature(x, np.array([0.5, 0.5])),
                registered_model_name="broken_model",
                pip_requirements=["pandas"],
            )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def test_a_model_that_raises_on_predict_fails_the_gate(
    bentoml_home: Path, demo_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A temporary registry: a copy of the demo one, whose database is already migrated.
    shutil.copyfile(demo_home / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_broken_model(uri, tmp_path / "artifacts")
    models = tmp_path / "models.yaml"
    models.write_text("- {name: broken_model, version: 1, endpoint: broken}\n")
    argv = ["profile", "--all", "--models", str(models), "--tracking-uri", uri]
    argv += ["--cache-dir", str(tmp_path / "profiles"), "--duration", "1", "--idle", "0.5"]
    assert fleet_main(argv) == 1
    err = capsys.readouterr().err
    assert "model 'broken_model' failed the profile gate" in err
    assert "predictions failed" in err
    assert "this model is broken on purpose" in err  # from the server's log
