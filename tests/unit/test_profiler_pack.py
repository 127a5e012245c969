"""The pack measurement's pure parts: the arithmetic of `PackStats`, the report's JSON and
summaries with and without it, the twin run in the gate, the copies' names, and the
`FLEET_PACK` entries the docker backend makes from a model image's environment."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fleet.schema import Column
from fleet.serving.config import (
    ENV_MODEL_DIR,
    ENV_MODEL_NAME,
    ConfigError,
    ServerConfig,
    pack_from_env,
)
from fleet.spec import MemoryPolicy
from profiler.backends import copy_names
from profiler.cache import ProfileCache
from profiler.docker import out_of_memory, pack_entries
from profiler.gate import problems_of
from profiler.report import MemoryStats, PackStats, Report, summary_table
from tests.unit.test_profiler_policy import make_report


def stats(idle: float, p95: float, peak: float, source: str = "pss") -> MemoryStats:
    return MemoryStats(idle, p95, peak, samples=50, interval_s=0.1, source=source)


PACK = PackStats(180.0, 190.5, 200.0, 1.5, 2.25, 3.0, source="uss (process tree)")


def test_marginal_is_what_the_twin_adds_and_baseline_the_rest():
    single = stats(180.0, 190.0, 200.0)
    pack = PackStats.of(single, single, stats(182.04, 193.06, 209.0, "uss"))
    assert pack == PackStats(
        baseline_idle_mib=178.0,
        baseline_p95_mib=186.9,
        baseline_peak_mib=191.0,
        marginal_idle_mib=2.0,
        marginal_p95_mib=3.1,
        marginal_peak_mib=9.0,
        source="uss",
    )


def test_the_marginal_compares_private_memory_and_the_baseline_is_the_servers():
    # PSS of the single run 180/190/200; private (USS) 140/150/160 alone, 141/153/160 twice
    private = stats(140.0, 150.0, 160.0, "uss")
    pack = PackStats.of(stats(180.0, 190.0, 200.0), private, stats(141.0, 153.0, 160.0, "uss"))
    marginal = (pack.marginal_idle_mib, pack.marginal_p95_mib, pack.marginal_peak_mib)
    baseline = (pack.baseline_idle_mib, pack.baseline_p95_mib, pack.baseline_peak_mib)
    assert marginal == (1.0, 3.0, 0.0)
    assert baseline == (179.0, 187.0, 200.0)


def test_a_twin_below_the_single_run_adds_nothing():
    # memory moves by a MiB or so between runs: a twin measured lower costs 0, not less
    single = stats(180.0, 190.0, 200.0)
    pack = PackStats.of(single, single, stats(179.0, 191.5, 196.0))
    assert pack.marginal_idle_mib == 0.0 and pack.baseline_idle_mib == 180.0
    assert pack.marginal_p95_mib == 1.5 and pack.baseline_p95_mib == 188.5
    assert pack.marginal_peak_mib == 0.0 and pack.baseline_peak_mib == 200.0


def test_a_report_with_pack_round_trips_and_an_old_one_still_loads():
    report = make_report(pack=PACK)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["pack"]["marginal_p95_mib"] == 2.25
    assert Report.from_dict(data) == report
    old = make_report().to_dict()
    assert old["pack"] is None
    del old["pack"]  # written before pack measurement existed
    assert Report.from_dict(old) == make_report()


def test_the_cache_returns_the_pack(tmp_path):
    cache = ProfileCache(tmp_path)
    cache.put(make_report(pack=PACK))
    hit = cache.get("abc123")
    assert hit is not None and hit.pack == PACK


def test_summaries_show_the_pack_when_measured():
    line = make_report(pack=PACK).summary()
    assert "in a pack: baseline p95 190 / peak 200 MiB + 2.2 / 3.0 MiB per model" in line
    assert "in a pack" not in make_report().summary()
    table = summary_table([make_report(pack=PACK), make_report(model="other")])
    head, first, second = table.splitlines()[:3]
    assert head.split()[-7:] == ["base", "p95", "base", "peak", "+p95", "+peak", "gate"]
    assert first.split()[-5:] == ["190", "200", "2.2", "3.0", "ok"]
    assert second.split()[-5:] == ["-", "-", "-", "-", "ok"]
    assert "what one more copy adds" in table
    assert "+p95" not in summary_table([make_report()])


def test_the_gate_holds_the_twin_runs_load_too():
    report = make_report()
    twin = replace(report.load, errors=2, first_errors=["/models/m1--twin: HTTP 500: boom"])
    policy = MemoryPolicy()
    assert problems_of(report, policy, replace(report.load)) == []
    assert problems_of(report, policy, twin) == [
        "in the twin pack run: predictions failed: 2 of 1000 valid requests failed "
        "(first: /models/m1--twin: HTTP 500: boom)"
    ]


def test_copy_names():
    assert copy_names("m", 1) == ["m"]
    assert copy_names("m", 2) == ["m", "m--twin"]
    assert copy_names("m", 3) == ["m", "m--twin", "m--twin2"]
    with pytest.raises(ValueError):
        copy_names("m", 0)


def test_pack_entries_come_from_the_images_own_settings():
    config = ServerConfig(
        model_name="m1",
        model_tag="m1:abc",
        inputs=(Column("x", "double"),),
        batching=False,
        max_batch_size=8,
    )
    image_env = {
        **config.to_env(),
        ENV_MODEL_DIR: "/home/bentoml/bento/models/m1/abc/mlflow_model",
        "PATH": "/usr/bin",
        "HOME": "/tmp",
    }
    names, entries = pack_entries(image_env, 2)
    assert names == ["m1", "m1--twin"]
    assert [e[ENV_MODEL_NAME] for e in entries] == names
    assert {e[ENV_MODEL_DIR] for e in entries} == {image_env[ENV_MODEL_DIR]}
    assert all("PATH" not in e for e in entries)
    # what the server reads back: the same model twice, the image's settings kept
    served = pack_from_env({"FLEET_PACK": json.dumps(entries)})
    assert served is not None
    assert [c for c, _ in served] == [config, replace(config, model_name="m1--twin")]
    with pytest.raises(ConfigError, match=ENV_MODEL_DIR):
        pack_entries(config.to_env(), 2)
    with pytest.raises(ConfigError):
        pack_entries({"PATH": "/usr/bin"}, 2)


def test_out_of_memory_of_a_pack_names_the_times_the_ceiling():
    assert "2 times the model's ceiling of 640 MiB" in out_of_memory(640, "137", 2)
    assert "its limit, the model's ceiling of 640 MiB" in out_of_memory(640, "137")
