"""The profiler against real model servers (BentoML, process backend) on the demo registry.

The two demo models are profiled once per module, side by side; the tests read the
reports. Load is kept to a few seconds per model.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleet.cli import main as fleet_main
from fleet.host.environment import child_env
from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry, local_tracking_uri
from fleet.resolved import ResolvedModel
from profiler import LoadPlan, Outcome, ProfileCache, ProfileOptions, profile, profile_fleet
from profiler.backends import ProcessBackend, bento_command, bento_pack_command
from profiler.report import Report
from tests.support import by_name, register_pyfunc

SMALL = "match_probability_1_TAXI_trafficaware"
BIG = "demand_forecast_2"  # a ~200 MB random forest
OPTIONS = ProfileOptions(
    plan=LoadPlan(duration_s=3.0, concurrencies=(1, 8), batch_sizes=(1, 16)),
    ready_timeout_s=300,
    idle_s=1.0,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def profiled(
    model_store: ModelStore,
    demo_resolved: list[ResolvedModel],
    demo_registry: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Outcome], ProfileCache, list[str]]:
    cache = ProfileCache(tmp_path_factory.mktemp("profiles"))
    models = [r for r in demo_resolved if r.name in (SMALL, BIG)]
    lines: list[str] = []
    outcomes = profile_fleet(
        models,
        demo_registry,
        backend=ProcessBackend(bento_command(model_store)),
        options=OPTIONS,
        parallel=2,
        cache=cache,
        progress=lines.append,
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


@pytest.fixture(scope="module")
def packed(
    profiled: Any,
    model_store: ModelStore,
    demo_resolved: list[ResolvedModel],
    demo_registry: Registry,
) -> tuple[Report, Report, ProfileCache]:
    """The small model's single-run report from the module's cache, and its pack
    measurement, which that report does not do for: profiled again and stored."""
    outcomes, cache, _ = profiled
    single = outcomes[SMALL].report
    assert single is not None and single.pack is None
    report = profile(
        by_name(demo_resolved, SMALL),
        demo_registry,
        backend=ProcessBackend(bento_command(model_store), bento_pack_command(model_store)),
        options=OPTIONS,
        content_hash=single.content_hash,
        cache=cache,
        pack=True,
    )
    return single, report, cache


def test_pack_run_measures_what_the_model_adds_to_a_pack(packed: Any) -> None:
    single, report, cache = packed
    assert not report.cached and report.passed and report.created >= single.created
    pack = report.pack
    assert pack is not None and cache.get(report.content_hash) == report
    assert pack.source == "uss (process tree)"
    # a second copy of a small pyfunc is a few MiB; the server and its libraries are the rest
    assert 0 <= pack.marginal_p95_mib < 15
    assert 0 <= pack.marginal_idle_mib < 15
    p95, peak = report.memory.p95_mib, report.memory.peak_mib
    assert pack.baseline_p95_mib == pytest.approx(p95 - pack.marginal_p95_mib, abs=0.15)
    assert pack.baseline_peak_mib == pytest.approx(peak - pack.marginal_peak_mib, abs=0.15)
    assert pack.baseline_p95_mib >= 100 > pack.marginal_p95_mib


def test_fleet_profile_pack_prints_the_pack_from_the_cache(
    packed: Any, demo_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, report, cache = packed
    argv = ["profile", SMALL, "--pack", "--tracking-uri", demo_uri, "--cache-dir", str(cache.root)]
    assert fleet_main(argv) == 0
    out = capsys.readouterr().out
    assert f"{SMALL} v1 (cached)" in out and "in a pack: baseline p95" in out
    assert "+p95" in out and f"{report.pack.marginal_p95_mib:.1f}" in out


def register_broken_model(uri: str, artifacts: Path) -> None:
    """A pyfunc that raises on predict, registered as `broken_model` version 1 at `uri`."""
    import cloudpickle
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    class Broken(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            raise ValueError("this model is broken on purpose")

    # The class travels inside the model, as from a notebook; the server cannot import tests.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        x = pd.DataFrame({"distance": [1.0, 2.0], "hour": np.array([3, 4], dtype="int64")})
        register_pyfunc(
            uri,
            "broken_model",
            Broken(),
            experiment="broken",
            artifacts=artifacts,
            signature=infer_signature(x, np.array([0.5, 0.5])),
            pip_requirements=["pandas"],
        )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_model_that_raises_on_predict_fails_the_gate(
    model_store: ModelStore, demo_home: Path, tmp_path: Path
) -> None:
    # A temporary registry: a copy of the demo one, whose database is already migrated.
    shutil.copyfile(demo_home / "mlflow.db", tmp_path / "mlflow.db")
    uri = local_tracking_uri(tmp_path)
    register_broken_model(uri, tmp_path / "artifacts")
    models = tmp_path / "models.yaml"
    models.write_text("- {name: broken_model, version: 1, endpoint: broken}\n")
    argv = ["profile", "--all", "--models", str(models), "--tracking-uri", uri]
    argv += ["--cache-dir", str(tmp_path / "profiles"), "--duration", "1", "--idle", "0.5"]
    # `fleet profile` as a command: its model servers use the session's BentoML store.
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli", *argv],
        cwd=tmp_path,
        env=child_env(model_store.env()),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    err = done.stderr
    assert "model 'broken_model' failed the profile gate" in err
    assert "predictions failed" in err
    assert "this model is broken on purpose" in err  # from the server's log
