"""Pure parts of the profiler: the sizing policy, the report, the gate and the cache."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.sizing import Recommendation, fixed, recommend
from fleet.spec import MemoryPolicy
from profiler.cache import ProfileCache
from profiler.gate import ProfileGateError, problems_of, rederive
from profiler.report import LoadStats, MemoryStats, PhaseStats, Report, summary_table


def test_request_is_p95_plus_margin_and_limit_is_the_larger_of_factor_and_floor():
    policy = MemoryPolicy(request_margin_percent=15, limit_factor=1.5, limit_floor_mib=64)
    # 300 * 1.15 = 345; max(320 * 1.5, 320 + 64) = 480
    assert recommend(300, 320, policy) == Recommendation(request_mib=345, limit_mib=480)
    # small model: the floor wins: max(100 * 1.5, 100 + 64) = 164
    assert recommend(90, 100, policy) == Recommendation(request_mib=104, limit_mib=164)


def test_values_round_up_to_whole_mib():
    policy = MemoryPolicy(request_margin_percent=10, limit_factor=1.0, limit_floor_mib=0)
    rec = recommend(100.01, 200.2, policy)
    assert rec == Recommendation(request_mib=111, limit_mib=201)
    # float noise does not add a MiB: 100 * 1.1 is 110.00000000000001 in binary
    assert recommend(100, 110, policy).request_mib == 110


def test_limit_never_below_request():
    policy = MemoryPolicy(request_margin_percent=100, limit_factor=1.0, limit_floor_mib=0)
    rec = recommend(200, 200, policy)
    assert rec.request_mib == 400 and rec.limit_mib == 400


def test_fixed_memory_skips_measurement():
    policy = MemoryPolicy(fixed_mib=256)
    assert recommend(1000, 2000, policy) == Recommendation(256, 256)
    assert fixed(policy).kubernetes() == {
        "requests": {"memory": "256Mi"},
        "limits": {"memory": "256Mi"},
    }
    with pytest.raises(ValueError, match="fixed_mib"):
        fixed(MemoryPolicy())


@given(
    p95=st.floats(0, 10_000),
    extra=st.floats(0, 5_000),
    margin=st.floats(0, 200),
    factor=st.floats(1, 4),
    floor=st.integers(0, 1024),
)
def test_policy_bounds(p95, extra, margin, factor, floor):
    peak = p95 + extra
    policy = MemoryPolicy(request_margin_percent=margin, limit_factor=factor, limit_floor_mib=floor)
    rec = recommend(p95, peak, policy)
    assert rec.request_mib >= math.floor(p95 * (1 + margin / 100))
    assert rec.request_mib <= p95 * (1 + margin / 100) + 1
    assert rec.limit_mib >= peak + floor - 1e-6
    assert rec.limit_mib >= peak * factor - 1e-6
    assert rec.limit_mib >= rec.request_mib


def make_report(**changes) -> Report:
    report = Report(
        model="m1",
        version=3,
        model_uri="models:/m1/3",
        content_hash="abc123",
        backend="process",
        created="2026-01-01T00:00:00+00:00",
        memory=MemoryStats(400.0, 420.5, 450.0, samples=80, interval_s=0.1, source="pss"),
        load=LoadStats(
            duration_s=5.0,
            requests=1000,
            records=8000,
            errors=0,
            req_per_s=200.0,
            p50_ms=3.0,
            p99_ms=12.5,
            phases=[PhaseStats(1, 1, 500, 0, 250.0, 2.5, 5.0)],
            invalid_sent=4,
        ),
        policy=MemoryPolicy().model_dump(),
        recommendation=Recommendation(484, 675),
    )
    return replace(report, **changes)


def test_report_round_trips_through_json():
    report = make_report()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["schema"] == 1 and data["passed"] is True
    assert data["recommendation"] == {"request_mib": 484, "limit_mib": 675}
    assert data["memory"]["p95_mib"] == 420.5
    assert Report.from_dict(data) == report


def test_report_of_another_schema_is_refused():
    data = make_report().to_dict() | {"schema": 99}
    with pytest.raises(ValueError, match="schema"):
        Report.from_dict(data)


def test_summary_names_memory_latency_and_recommendation():
    line = make_report().summary()
    for part in ("m1 v3", "idle 400", "p95 420", "peak 450", "p50 3.0ms", "p99 12.5ms"):
        assert part in line
    assert "request 484Mi limit 675Mi; ok" in line
    table = summary_table([make_report(), replace(make_report(model="other"), cached=True)])
    assert "other *" in table and "484Mi" in table and "from the cache" in table


def test_gate_names_every_problem():
    load = replace(
        make_report().load,
        errors=3,
        first_errors=["HTTP 500: boom"],
        invalid_accepted=["no records: got HTTP 200"],
    )
    report = make_report(load=load)
    problems = problems_of(report, MemoryPolicy(ceiling_mib=400))
    assert problems == [
        "predictions failed: 3 of 1000 valid requests failed (first: HTTP 500: boom)",
        "an invalid request was accepted: no records: got HTTP 200",
        "memory peak 450 MiB is above the ceiling of 400 MiB (memory.ceiling_mib)",
    ]
    assert problems_of(make_report(), MemoryPolicy(ceiling_mib=450)) == []
    err = ProfileGateError("m1", problems, log_tail=["Traceback", "ValueError: boom"])
    assert "model 'm1' failed the profile gate" in str(err)
    assert "| ValueError: boom" in str(err)


def test_rederive_follows_the_policy_below_the_ceiling():
    """A policy-only change: request and limit from the stored p95 and peak."""
    policy = MemoryPolicy(request_margin_percent=50, ceiling_mib=500)
    assert rederive("m1", 365.0, 400.0, policy) == recommend(365.0, 400.0, policy)
    assert rederive("m1", 365.0, 400.0, policy) == Recommendation(548, 600)
    # at the ceiling is not above it
    assert rederive("m1", 365.0, 500.0, policy) == recommend(365.0, 500.0, policy)


def test_rederive_above_the_ceiling_fails_the_gate_naming_the_model():
    policy = MemoryPolicy(ceiling_mib=256)
    with pytest.raises(ProfileGateError, match="model 'm1' failed the profile gate") as info:
        rederive("m1", 365.0, 400.0, policy)
    assert info.value.model == "m1"
    assert info.value.problems == [
        "memory peak 400 MiB is above the ceiling of 256 MiB (memory.ceiling_mib)"
    ]


@given(
    p95=st.floats(0, 10_000),
    extra=st.floats(0, 5_000),
    margin=st.floats(0, 200),
    factor=st.floats(1, 4),
    floor=st.integers(0, 1024),
    ceiling=st.integers(1, 20_000),
)
def test_rederive_is_the_gate_then_recommend(p95, extra, margin, factor, floor, ceiling):
    peak = p95 + extra
    policy = MemoryPolicy(
        request_margin_percent=margin,
        limit_factor=factor,
        limit_floor_mib=floor,
        ceiling_mib=ceiling,
    )
    if peak > ceiling:
        with pytest.raises(ProfileGateError):
            rederive("m", p95, peak, policy)
    else:
        assert rederive("m", p95, peak, policy) == recommend(p95, peak, policy)


def test_cache_stores_passing_reports_by_content_hash(tmp_path):
    cache = ProfileCache(tmp_path / "profiles")
    assert cache.get("abc123") is None
    path = cache.put(make_report())
    assert path == tmp_path / "profiles" / "abc123.json"
    assert cache.get("abc123") == make_report()
    assert cache.get("abc124") is None


def test_cache_keeps_failed_reports_aside(tmp_path):
    cache = ProfileCache(tmp_path)
    path = cache.put(make_report(content_hash="bad1", problems=["predictions failed: x"]))
    assert path == tmp_path / "failed" / "bad1.json"
    assert cache.get("bad1") is None


def test_cache_ignores_torn_files_and_refuses_odd_hashes(tmp_path):
    cache = ProfileCache(tmp_path)
    (tmp_path / "torn.json").write_text('{"schema": 1, "model"')
    assert cache.get("torn") is None
    with pytest.raises(ValueError, match="content hash"):
        cache.path("../escape")
