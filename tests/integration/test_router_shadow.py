"""Shadow traffic through the router (fleet.router.shadow), run as `python -m fleet.router`.

With stand-in model servers: a shadow that hangs or fails changes nothing in what callers
get (the same bytes as a router without the shadow), and its calls are bounded, counted
and dropped past the bound. With the demo's real model servers (version 1 of a model and
its challenger, version 2): the shadow gets the configured share of the requests, and the
router's histogram of differences is the one computed offline with `pyfunc.predict`.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import pandas as pd
import pytest

from fleet.host.model_store import ModelStore
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.router.metrics import DIFF_BUCKETS
from fleet.routes import build_routes_config
from fleet.schema import random_records
from fleet.spec import Fleet
from tests.support import (
    Servers,
    by_name,
    local_model_dir,
    metric_samples,
    until,
    wait_for,
)

COLUMNS = [{"name": "x", "type": "double", "required": True}]
REQUESTS = 40


def _route(echo: str, path: str, model: str, timeout_s: float = 5.0) -> dict[str, Any]:
    # The echo stand-in plays the model named by the backend's first path segment.
    return {
        "path": path,
        "model": model,
        "version": 1,
        "backend": f"{echo}/{model}",
        "inputs": COLUMNS,
        "timeout_s": timeout_s,
    }


def _config(echo: str, shadows: bool) -> dict[str, Any]:
    hang, fail = _route(echo, "/primary-a", "ok-a"), _route(echo, "/primary-b", "ok-b")
    if shadows:
        hang["shadow"] = {"model": "hang", "percent": 100}
        fail["shadow"] = {"model": "fail", "percent": 100}
    return {
        "version": 1,
        "limits": {"shadow_calls": 2, "timeout_s": 5.0},
        "routes": [
            hang,
            fail,
            _route(echo, "/hang", "hang", timeout_s=1.0),
            _route(echo, "/fail", "fail"),
        ],
    }


@pytest.fixture(scope="module")
def routers(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(a router whose two routes have a hanging and a failing shadow, the same without)."""
    echo = servers.echo().start().url
    folder = tmp_path_factory.mktemp("shadow")
    with_shadows = servers.router(_config(echo, True), folder / "with.json")
    without = servers.router(_config(echo, False), folder / "without.json")
    wait_for([with_shadows.launch(), without.launch()], 60)
    return with_shadows.url, without.url


def _answers(url: str, path: str) -> list[tuple[int, bytes, list[tuple[str, str]]]]:
    out = []
    with httpx.Client(base_url=url, timeout=10) as http:
        for i in range(REQUESTS):
            resp = http.post(path, json=[{"x": i + 0.25}, {"x": i + 0.5}])  # never 13 (refused)
            headers = [(k, v) for k, v in resp.headers.items() if k not in ("date", "server")]
            out.append((resp.status_code, resp.content, headers))
    return out


@pytest.mark.parametrize(
    ("path", "shadow", "kind"),
    [("/primary-a", "hang", "timeout"), ("/primary-b", "fail", "status")],
)
def test_a_failing_shadow_changes_nothing_for_callers_and_is_bounded(
    routers: tuple[str, str], path: str, shadow: str, kind: str
) -> None:
    shadowed, plain = routers
    got = _answers(shadowed, path)
    assert got == _answers(plain, path)  # status, body and headers, byte for byte
    assert {status for status, _, _ in got} == {200}
    labels = (("route", path), ("shadow", shadow))

    def settled() -> tuple[float, float, float]:
        calls = metric_samples(shadowed, "fleet_router_shadow_calls_total")
        dropped = metric_samples(shadowed, "fleet_router_shadow_dropped_total")
        errors = metric_samples(shadowed, "fleet_router_shadow_errors_total")
        return (
            calls.get((("outcome", "error"), *labels), 0.0),
            dropped.get(labels, 0.0),
            errors.get((("kind", kind), *labels), 0.0),
        )

    until(lambda: sum(settled()[:2]) >= REQUESTS, 10)  # hanging calls end at their 1 s timeout
    failed, dropped, of_kind = settled()
    assert failed + dropped == REQUESTS  # every request was copied or counted as dropped
    assert failed == of_kind >= 1
    if shadow == "hang":
        # At most 2 in flight, each held 1 s: nearly every copy was dropped.
        assert dropped >= REQUESTS - 2 * 3
    ok = metric_samples(shadowed, "fleet_router_shadow_calls_total")
    assert ok.get((("outcome", "ok"), *labels), 0.0) == 0.0


# --- real model servers ------------------------------------------------------------------

PRIMARY = "match_probability_2_TAXI_trafficaware"
CHALLENGER = "match_probability_2_TAXI_trafficaware_challenger"


@pytest.fixture(scope="module")
def model_servers(
    servers: Servers,
    model_store: ModelStore,
    demo_resolved: list[ResolvedModel],
    demo_registry: Registry,
) -> dict[str, tuple[ResolvedModel, str]]:
    picked = [by_name(demo_resolved, name) for name in (PRIMARY, CHALLENGER)]
    started = [servers.model_server(r, model_store, demo_registry) for r in picked]
    wait_for([s.launch() for s in started], 300)
    return {r.name: (r, s.url) for r, s in zip(picked, started, strict=True)}


def _router(
    servers: Servers,
    fleet: Fleet,
    model_servers: dict[str, tuple[ResolvedModel, str]],
    percent: float,
    folder: Path,
) -> str:
    urls = {name: url for name, (_, url) in model_servers.items()}
    resolved = [r for r, _ in model_servers.values()]
    config = build_routes_config(
        fleet.only([PRIMARY, CHALLENGER]), resolved, lambda r: urls[r.name]
    )
    (route,) = [r for r in config["routes"] if r["model"] == PRIMARY]
    assert route["shadow"]["model"] == CHALLENGER  # as models.yaml says
    route["shadow"]["percent"] = percent
    config["limits"]["shadow_calls"] = 64  # sequential callers: nothing is dropped
    return servers.router(config, folder / f"routes-{percent:g}.json").start().url


@pytest.mark.slow
def test_the_shadow_gets_its_share_of_requests(
    servers: Servers,
    demo_fleet: Fleet,
    model_servers: dict[str, tuple[ResolvedModel, str]],
    tmp_path: Path,
) -> None:
    router = _router(servers, demo_fleet, model_servers, 25, tmp_path)
    resolved, _ = model_servers[PRIMARY]
    n = 600
    records = random_records(resolved.inputs, n, seed=11)
    with httpx.Client(base_url=router, timeout=30) as http:
        for record in records:
            assert http.post(resolved.model.route, json=record).status_code == 200
    labels = (("route", resolved.model.route), ("shadow", CHALLENGER))

    def settled() -> bool:  # every call that ended was answered
        ended = metric_samples(router, "fleet_router_shadow_duration_seconds_count")
        ok = metric_samples(router, "fleet_router_shadow_calls_total")
        return ended.get(labels, 0.0) == ok.get((("outcome", "ok"), *labels), 0.0)

    until(settled, 10)
    calls = metric_samples(router, "fleet_router_shadow_calls_total")
    copied = calls.get((("outcome", "ok"), *labels), 0.0)
    # Binomial(600, 0.25): mean 150, sd 10.6; 5 sd either side.
    assert 150 - 53 <= copied <= 150 + 53, copied
    assert calls.get((("outcome", "error"), *labels), 0.0) == 0.0
    dropped = metric_samples(router, "fleet_router_shadow_dropped_total")
    assert dropped.get(labels, 0.0) == 0.0
    # Every copy was one prediction, each compared.
    compared = metric_samples(router, "fleet_router_shadow_abs_diff_count")
    assert compared[labels] == copied


@pytest.mark.slow
def test_the_difference_histogram_is_the_offline_one(
    servers: Servers,
    demo_fleet: Fleet,
    demo_uri: str,
    model_servers: dict[str, tuple[ResolvedModel, str]],
    tmp_path: Path,
) -> None:
    router = _router(servers, demo_fleet, model_servers, 100, tmp_path)
    resolved, _ = model_servers[PRIMARY]
    records = random_records(resolved.inputs, 400, seed=12)
    batches = [records[i : i + 20] for i in range(0, len(records), 20)]
    got: list[float] = []
    with httpx.Client(base_url=router, timeout=30) as http:
        for batch in batches:
            resp = http.post(resolved.model.route, json=batch)
            assert resp.status_code == 200, resp.text
            got += resp.json()["predictions"]
    labels = (("route", resolved.model.route), ("shadow", CHALLENGER))

    def all_compared() -> bool:  # the router compares after the caller has its answer
        compared = metric_samples(router, "fleet_router_shadow_abs_diff_count")
        return compared.get(labels, 0.0) >= len(records)

    assert until(all_compared, 10), "the shadow calls did not all finish"

    frame = pd.DataFrame(records)
    champion = mlflow.pyfunc.load_model(str(local_model_dir(demo_uri, PRIMARY, "champion")))
    challenger = mlflow.pyfunc.load_model(str(local_model_dir(demo_uri, PRIMARY, "challenger")))
    offline_primary = [float(v) for v in champion.predict(frame)]
    assert got == offline_primary  # what callers got is version 1's answer
    diffs = [abs(a - b) for a, b in zip(got, challenger.predict(frame), strict=True)]
    assert max(diffs) > 0  # the challenger does differ

    buckets = metric_samples(router, "fleet_router_shadow_abs_diff_bucket")
    for bound in DIFF_BUCKETS:
        want = bisect.bisect_right(sorted(diffs), bound)
        assert buckets[(("le", repr(float(bound))), *labels)] == want, bound
    total = metric_samples(router, "fleet_router_shadow_abs_diff_sum")[labels]
    assert math.isclose(total, sum(diffs), rel_tol=1e-9)
