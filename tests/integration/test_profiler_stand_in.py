"""The profile run end to end against a stand-in model server (real processes, real HTTP).

The stand-in is tests/integration/test_profiler_stub.py run as a script
(`tests.support.stub_argv`): a small HTTP server that speaks the model server's API
(contract 1), validates records with fleet.schema, holds a configurable ballast of
memory, and can be told to fail predictions, accept anything, or never be ready. The real
BentoML server is profiled in tests/integration/test_profiler.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

import psutil
import pytest

from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import Column
from fleet.spec import MemoryPolicy, Model, Settings
from profiler import LoadPlan, ProfileCache, ProfileGateError, ProfileOptions, profile
from profiler.backends import ProcessBackend
from profiler.parallel import profile_fleet
from tests.support import STUB_COLUMNS, stub_argv

COLUMNS = [Column.from_dict(c) for c in STUB_COLUMNS]
FAST = ProfileOptions(
    plan=LoadPlan(duration_s=0.8, concurrencies=(1, 4), batch_sizes=(1, 8)),
    ready_timeout_s=30,
    sample_interval_s=0.05,
    idle_s=0.3,
)


def resolved(name: str = "stub_model", memory: MemoryPolicy | None = None) -> ResolvedModel:
    settings = Settings(memory=memory or MemoryPolicy())
    model = Model(
        name=name, version=1, alias=None, route=f"/{name}", k8s_name=name, settings=settings
    )
    return ResolvedModel(
        model=model,
        version=1,
        model_uri=f"models:/{name}/1",
        run_id="r1",
        source="",
        inputs=COLUMNS,
    )


def stub(mode: str = "ok", ballast_mib: int = 0, starts: list[int] | None = None) -> ProcessBackend:
    def command(
        _r: ResolvedModel, _registry: Registry | None, port: int
    ) -> tuple[list[str], dict[str, str]]:
        if starts is not None:
            starts.append(port)
        return stub_argv(port, mode, ballast_mib), {}

    return ProcessBackend(command)


def shell(code: str) -> ProcessBackend:
    return ProcessBackend(lambda _r, _u, _p: ([sys.executable, "-u", "-c", code], {}))


def test_memory_of_a_bigger_server_is_measured_and_sized_larger(tmp_path):
    small = profile(resolved("small"), None, backend=stub(), options=FAST, content_hash="h-small")
    big = profile(
        resolved("big"), None, backend=stub(ballast_mib=120), options=FAST, content_hash="h"
    )
    assert big.memory.idle_mib - small.memory.idle_mib >= 110
    assert big.memory.p95_mib - small.memory.p95_mib >= 110
    # PSS of a small process moves by a MiB or two as other processes share its libraries
    assert small.memory.idle_mib <= small.memory.p95_mib + 5
    assert small.memory.p95_mib <= small.memory.peak_mib
    assert big.recommendation.request_mib >= small.recommendation.request_mib + 110
    assert big.recommendation.limit_mib > small.recommendation.limit_mib
    assert small.passed and small.load.errors == 0 and small.load.invalid_sent == 4
    assert small.load.requests > 10 and small.load.p50_ms is not None
    assert [(p.concurrency, p.batch_size) for p in small.load.phases] == [
        (1, 1),
        (4, 1),
        (1, 8),
        (4, 8),
    ]
    assert small.load.records == sum(p.requests * p.batch_size for p in small.load.phases)
    assert small.memory.source == "pss (process tree)" and small.backend == "process"


def test_memory_grown_under_load_shows_in_p95_and_peak():
    report = profile(resolved(), None, backend=stub("grow"), options=FAST, content_hash="h")
    # the stand-in keeps 1 MiB per prediction request: load adds that over idle
    grown = report.memory.peak_mib - report.memory.idle_mib
    assert report.load.requests >= 5
    assert grown >= 0.8 * report.load.requests
    assert report.memory.p95_mib > report.memory.idle_mib


def test_failing_predictions_fail_the_gate_with_the_log():
    with pytest.raises(ProfileGateError) as info:
        profile(resolved(), None, backend=stub("fail"), options=FAST, content_hash="h")
    message = str(info.value)
    assert "model 'stub_model' failed the profile gate" in message
    assert "predictions failed" in message and "HTTP 500" in message
    assert "ValueError: the model raised on predict" in message  # from the server's log


def test_an_accepted_invalid_request_fails_the_gate(tmp_path):
    cache = ProfileCache(tmp_path)
    with pytest.raises(ProfileGateError) as info:
        profile(
            resolved(), None, backend=stub("lenient"), options=FAST, content_hash="h1", cache=cache
        )
    problems = info.value.problems
    assert (
        "an invalid request was accepted: required field 'distance' missing: got HTTP 200"
        in problems
    )
    assert "an invalid request was accepted: no records: got HTTP 200" in problems
    assert (tmp_path / "failed" / "h1.json").is_file() and cache.get("h1") is None


def test_memory_above_the_ceiling_fails_the_gate():
    # 64 MiB of ballast is above a 40 MiB ceiling whatever the interpreter itself takes
    model = resolved(memory=MemoryPolicy(ceiling_mib=40))
    with pytest.raises(ProfileGateError, match=r"memory peak \d+ MiB is above the ceiling of 40"):
        profile(model, None, backend=stub(ballast_mib=64), options=FAST, content_hash="h")


def test_a_server_that_never_gets_ready_fails_within_the_timeout_with_its_log():
    code = "import time; print('loading weights from the registry ...'); time.sleep(120)"
    options = ProfileOptions(ready_timeout_s=2, idle_s=0.1)
    before = {p.pid for p in psutil.process_iter()}
    with pytest.raises(ProfileGateError) as info:
        profile(resolved(), None, backend=shell(code), options=options, content_hash="h")
    message = str(info.value)
    assert "server never ready: GET http://127.0.0.1:" in message
    assert "/readyz did not answer 200 within 2 s (last: " in message
    assert "| loading weights from the registry ..." in message
    # given up at the timeout: a wait for the sleep to end would say "exited with code 0"
    assert "exited" not in message
    leftover = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.pid not in before and "loading weights" in " ".join(p.info["cmdline"] or [])
    ]
    assert leftover == []  # the server was stopped


def test_a_server_that_exits_fails_at_once_with_its_exit_code():
    code = "import sys; print('ModuleNotFoundError: No module named sklearn'); sys.exit(3)"
    with pytest.raises(ProfileGateError) as info:
        profile(resolved(), None, backend=shell(code), options=FAST, content_hash="h")
    assert (
        "server never ready: the server process exited with code 3 before GET /readyz "
        "answered 200" in str(info.value)
    )
    assert "No module named sklearn" in str(info.value)


def test_fleet_run_uses_the_cache_and_profiles_a_changed_hash_again(tmp_path):
    cache = ProfileCache(tmp_path)
    starts: list[int] = []
    fixed_model = resolved("fixed", MemoryPolicy(fixed_mib=300))
    models = [resolved("a"), resolved("b"), fixed_model]
    lines: list[str] = []

    def run(hash_of: Callable[[ResolvedModel], str]) -> list[str]:
        outcomes = profile_fleet(
            models,
            None,
            backend=stub(starts=starts),
            options=FAST,
            parallel=2,
            cache=cache,
            hash_of=hash_of,
            progress=lines.append,
        )
        return [o.status for o in outcomes]

    assert run(lambda r: f"{r.name}-1") == ["profiled", "profiled", "fixed"]
    assert len(starts) == 2 and (tmp_path / "a-1.json").is_file()
    assert lines[0] == "profiling 2 of 3 models (1 with fixed memory), 2 at a time"
    assert sorted(line.split("]")[0] for line in lines[1:]) == ["[1/3", "[2/3", "[3/3"]
    assert any("fixed: memory fixed at 300 MiB, not profiled" in line for line in lines)

    assert run(lambda r: f"{r.name}-1") == ["cached", "cached", "fixed"]
    assert len(starts) == 2  # no server started
    assert any("a v1 (cached)" in line for line in lines)

    assert run(lambda r: f"{r.name}-2" if r.name == "b" else f"{r.name}-1") == [
        "cached",
        "profiled",
        "fixed",
    ]
    assert len(starts) == 3


def test_a_cached_report_is_judged_under_the_current_policy(tmp_path):
    cache = ProfileCache(tmp_path)
    first = profile(resolved(), None, backend=stub(), options=FAST, content_hash="h", cache=cache)
    wider = resolved(memory=MemoryPolicy(request_margin_percent=100))
    again = profile(wider, None, backend=stub("fail"), options=FAST, content_hash="h", cache=cache)
    assert again.cached and again.memory == first.memory
    assert again.recommendation.request_mib > first.recommendation.request_mib
    with pytest.raises(ProfileGateError, match="above the ceiling"):
        profile(resolved(memory=MemoryPolicy(ceiling_mib=1)), None, content_hash="h", cache=cache)


# --- the pack measurement: a second run of the model twice in one (stand-in) pack server ---


def packing_stub(
    single_mode: str = "ok",
    pack_mode: str = "ok",
    ballast_mib: int = 0,
    starts: list[list[str]] | None = None,
) -> ProcessBackend:
    """The stand-in, and as a pack server the stand-in serving each name with its own ballast."""

    def command(
        _r: ResolvedModel, _registry: Registry | None, port: int
    ) -> tuple[list[str], dict[str, str]]:
        if starts is not None:
            starts.append([_r.name])
        return stub_argv(port, single_mode, ballast_mib), {}

    def pack(
        _r: ResolvedModel, _registry: Registry | None, port: int, names: Sequence[str]
    ) -> tuple[list[str], dict[str, str]]:
        if starts is not None:
            starts.append(list(names))
        return [*stub_argv(port, pack_mode, ballast_mib), json.dumps(list(names))], {}

    return ProcessBackend(command, pack)


def test_the_pack_run_measures_what_a_second_copy_adds():
    # each copy holds 48 MiB of its own: that is the marginal cost; the rest is the baseline
    starts: list[list[str]] = []
    report = profile(
        resolved(),
        None,
        backend=packing_stub(ballast_mib=48, starts=starts),
        options=FAST,
        content_hash="h",
        pack=True,
    )
    assert starts == [["stub_model"], ["stub_model", "stub_model--twin"]]
    pack = report.pack
    assert pack is not None and report.passed
    for marginal in (pack.marginal_idle_mib, pack.marginal_p95_mib, pack.marginal_peak_mib):
        assert 44 <= marginal <= 53
    p95, peak = report.memory.p95_mib, report.memory.peak_mib
    assert pack.baseline_p95_mib == pytest.approx(p95 - pack.marginal_p95_mib, abs=0.15)
    assert pack.baseline_peak_mib == pytest.approx(peak - pack.marginal_peak_mib, abs=0.15)
    assert pack.source == "uss (process tree)"
    assert "in a pack: baseline p95" in report.summary()


def test_a_cached_report_without_the_pack_is_measured_again(tmp_path):
    cache = ProfileCache(tmp_path)
    starts: list[list[str]] = []
    backend = packing_stub(starts=starts)
    first = profile(resolved(), None, backend=backend, options=FAST, content_hash="h", cache=cache)
    assert first.pack is None and len(starts) == 1
    # a single-run call is content with it
    assert profile(resolved(), None, backend=backend, content_hash="h", cache=cache).cached
    packed = profile(
        resolved(), None, backend=backend, options=FAST, content_hash="h", cache=cache, pack=True
    )
    assert not packed.cached and packed.pack is not None and len(starts) == 3
    stored = cache.get("h")
    assert stored is not None and stored.pack == packed.pack
    # now both kinds of call are served from the cache
    again = profile(resolved(), None, backend=backend, content_hash="h", cache=cache, pack=True)
    assert again.cached and again.pack == packed.pack
    assert profile(resolved(), None, backend=backend, content_hash="h", cache=cache).cached
    assert len(starts) == 3


def test_a_model_that_fails_in_the_twin_run_fails_the_gate(tmp_path):
    # alone it answers; in the pack each copy answers its warm-up request, then fails
    cache = ProfileCache(tmp_path)
    with pytest.raises(ProfileGateError) as info:
        profile(
            resolved(),
            None,
            backend=packing_stub(pack_mode="flaky"),
            options=FAST,
            content_hash="h",
            cache=cache,
            pack=True,
        )
    message = str(info.value)
    assert "model 'stub_model' failed the profile gate" in message
    [problem] = info.value.problems
    assert problem.startswith("in the twin pack run: predictions failed: ")
    assert "(first: /models/stub_model: HTTP 500" in problem
    assert "ValueError: the model raised on predict" in message  # from the server's log
    # the failed report is kept aside, with the single run's numbers and the pack's
    failed = json.loads((tmp_path / "failed" / "h.json").read_text())
    assert failed["passed"] is False and failed["pack"] is not None
    assert cache.get("h") is None


def test_a_twin_that_fails_its_warm_up_fails_the_gate_naming_the_copy():
    with pytest.raises(ProfileGateError) as info:
        profile(
            resolved(),
            None,
            backend=packing_stub(pack_mode="fail"),
            options=FAST,
            content_hash="h",
            pack=True,
        )
    [problem] = info.value.problems
    assert problem.startswith(
        "in the twin pack run: predictions failed: the warm-up request to /models/stub_model "
        "got HTTP 500"
    )
    assert "model 'stub_model' failed the profile gate" in str(info.value)


def test_a_custom_command_without_a_pack_command_says_it_cannot_pack():
    with pytest.raises(ValueError, match="cannot start a pack of 2 copies"):
        profile(resolved(), None, backend=stub(), options=FAST, content_hash="h", pack=True)
