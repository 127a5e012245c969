"""End to end: `fleet serve` as a user runs it, packed (the demo fleet's default: one pack
server and the dedicated big model) and with `--dedicated` (one server per model): every
route called, the same answers both ways, servers killed and frozen under load and healed,
stopped with SIGTERM leaving no process behind."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from fleet.commands.serve import ServerPlan, plan
from fleet.host.demo_registry import BIG_MODEL
from fleet.host.environment import child_env
from fleet.host.model_store import ModelStore
from fleet.host.processes import Child, free_port
from fleet.host.registry import Registry
from fleet.packing import PackSize, Placement, PlacementFile, write_placement
from fleet.resolved import ResolvedModel
from fleet.schema import random_records
from fleet.spec import Fleet
from tests.conftest import ROOT
from tests.integration.test_predictions import assert_same

pytestmark = pytest.mark.slow

RUN_MARK = "FLEET_TEST_SERVE_RUN"
"""An environment variable every process of the served fleet inherits: how the test finds
them all, whatever their parent, process group or session."""


@contextmanager
def _serve(
    tmp_path_factory: pytest.TempPathFactory, demo_home: Path, store: ModelStore, *flags: str
) -> Iterator[tuple[str, Child, str]]:
    """`fleet serve *flags` in a fresh working folder whose default registry holds the demo.

    Its environment has no MLFLOW_* variables (the default local registry is used) and
    the session's BentoML store (models imported once). Yields the router's URL, the
    `fleet serve` process and the mark its processes carry (`RUN_MARK`).
    """
    mark = secrets.token_hex(8)
    work = tmp_path_factory.mktemp("serve")
    (work / ".fleet").mkdir()
    shutil.copy(demo_home / "mlflow.db", work / ".fleet" / "mlflow.db")
    shutil.copy(ROOT / "models.yaml", work / "models.yaml")
    port = free_port()
    argv = [sys.executable, "-m", "fleet.cli", "serve", "--port", str(port), *flags]
    log = work / "serve.log"
    with log.open("wb") as out:
        # Not `Supervisor.start`: this child runs in the working folder (its `.fleet`).
        proc = subprocess.Popen(
            [*argv, "--ready-timeout", "600"],
            cwd=work,
            env=child_env({**store.env(), RUN_MARK: mark}),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    child = Child(name="fleet serve", url=f"http://127.0.0.1:{port}", log_path=log, proc=proc)
    try:
        _wait_for_summary(child)
        yield child.url, child, mark
    finally:
        child.stop()


@pytest.fixture(scope="module")
def packed(
    tmp_path_factory: pytest.TempPathFactory, demo_home: Path, model_store: ModelStore
) -> Iterator[tuple[str, Child, str]]:
    """`fleet serve` as models.yaml says: the small models packed, the big one alone."""
    with _serve(tmp_path_factory, demo_home, model_store) as served:
        yield served


@pytest.fixture(scope="module")
def dedicated(
    tmp_path_factory: pytest.TempPathFactory, demo_home: Path, model_store: ModelStore
) -> Iterator[tuple[str, Child, str]]:
    """`fleet serve --dedicated`: one model server per model."""
    with _serve(tmp_path_factory, demo_home, model_store, "--dedicated") as served:
        yield served


def _wait_for_summary(child: Child, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = child.log_path.read_text()
        if "Ctrl-C stops them all" in text:
            return
        gone = child.exited()
        if gone is not None:
            pytest.fail(f"fleet serve: {gone}:\n{text[-3000:]}")
        time.sleep(1)
    pytest.fail(f"fleet serve not ready after {timeout_s} s:\n{child.log_tail(40)}")


def _servers(plans: list[ServerPlan]) -> list[tuple[str, list[str], bool]]:
    return [(p.name, [m.name for m in p.models], p.pack) for p in plans]


def test_only_places_the_remaining_models_from_the_placement_file_beside_models_yaml(
    tmp_path: Path, demo_fleet: Fleet, demo_registry: Registry
) -> None:
    small = sorted(m.name for m in demo_fleet.models if m.name != BIG_MODEL)
    fleet = demo_fleet.only([small[0], small[1], BIG_MODEL])  # fleet serve --only ...
    resolved = demo_registry.resolve(fleet)
    models_file = tmp_path / "models.yaml"
    plans, estimated = plan(fleet, resolved, models_file)
    assert _servers(plans) == [("pack-0", small[:2], True), (BIG_MODEL, [BIG_MODEL], False)]
    assert estimated == small[:2]
    # A placement file keeps a model in its pack; a new one joins it where it fits.
    size = PackSize(100, 120, 10, 12, content_hash="sha256:" + "0" * 64)
    placed = PlacementFile(Placement({"pack-3": (small[1],)}), {small[1]: size})
    write_placement(tmp_path / demo_fleet.packing.placement_file, placed)
    plans, estimated = plan(fleet, resolved, models_file)
    assert _servers(plans) == [("pack-3", small[:2], True), (BIG_MODEL, [BIG_MODEL], False)]
    assert estimated == [small[0]]


def test_dedicated_is_one_server_per_model(
    tmp_path: Path, demo_fleet: Fleet, demo_registry: Registry
) -> None:
    fleet = demo_fleet.with_packing(False)  # fleet serve --dedicated
    resolved = demo_registry.resolve(fleet)
    plans, estimated = plan(fleet, resolved, tmp_path / "models.yaml")
    assert _servers(plans) == [(r.name, [r.name], False) for r in resolved]
    assert estimated == []


def test_summary_names_router_swagger_and_one_curl_per_route(
    packed: tuple[str, Child, str], demo_fleet: Fleet
) -> None:
    url, child, _ = packed
    text = child.log_path.read_text()
    assert f"router: {url}" in text
    assert f"{url}/docs" in text
    for model in demo_fleet.models:
        assert f"curl -s {url}{model.route} " in text
    assert "DOWN" not in text


def test_every_route_answers_with_its_model(
    packed: tuple[str, Child, str], demo_resolved: list[ResolvedModel]
) -> None:
    url = packed[0]
    with httpx.Client(base_url=url, timeout=30) as client:
        for r in demo_resolved:
            records = random_records(r.inputs, 3, seed=7)
            resp = client.post(r.model.route, json=records)
            assert resp.status_code == 200, (r.model.route, resp.text)
            body = resp.json()
            assert body["model"] == r.name
            assert resp.headers["X-Model"] == r.name
            assert len(body["predictions"]) == 3


def test_experiment_route_is_sticky_and_bad_input_is_refused(
    packed: tuple[str, Child, str],
    demo_fleet: Fleet,
    demo_resolved: list[ResolvedModel],
) -> None:
    url = packed[0]
    exp = demo_fleet.experiments[0]
    inputs = next(r.inputs for r in demo_resolved if r.name == exp.variants[0].model)
    record = random_records(inputs, 1, seed=3)[0]
    with httpx.Client(base_url=url, timeout=30) as client:
        seen = {
            client.post(exp.route, json=record, headers={exp.sticky_header: "alice"}).headers[
                "X-Variant"
            ]
            for _ in range(5)
        }
        assert len(seen) == 1
        assert seen <= {v.model for v in exp.variants}
        bad = client.post(exp.route, json={**record, "route_decision_score": "high"})
        assert bad.status_code == 422
        assert "route_decision_score" in bad.text


def _fleet_processes(mark: str) -> list[psutil.Process]:
    """Every process on the machine that carries the served fleet's mark."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(RUN_MARK) == mark and process.status() != "zombie":
                found.append(process)
        except psutil.Error:
            continue
    return found


def _server_tree(child: Child, name: str) -> list[psutil.Process]:
    """The processes of model server `name`: found by the port `fleet serve` printed."""
    port = re.search(rf"ready: {name} \(http://127\.0\.0\.1:(\d+)\)", child.log_path.read_text())
    assert port is not None, child.log_tail(40)
    for process in psutil.Process(child.pid).children(recursive=True):
        with_port = ["--port", port.group(1)]
        cmdline = process.cmdline()
        if any(cmdline[i : i + 2] == with_port for i in range(len(cmdline))):
            return [process, *process.children(recursive=True)]
    raise AssertionError(f"no process of {name} on port {port.group(1)}")


def _until(what: str, done: Callable[[], bool], timeout_s: float, child: Child) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}\n{child.log_tail(40)}")
        time.sleep(0.5)


def _logged(child: Child, lines: list[str]) -> Callable[[], bool]:
    """Whether every one of `lines` is in `child`'s log yet."""
    return lambda: all(line in child.log_path.read_text() for line in lines)


def _load(
    url: str, bodies: dict[str, object], seen: dict[str, Counter[int]], stop: threading.Event
) -> None:
    """Call every route of `bodies` in turn until `stop` (at most 10 minutes)."""
    deadline = time.monotonic() + 600
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            for path, body in bodies.items():
                seen[path][client.post(path, json=body).status_code] += 1


def _kind(process: psutil.Process) -> str:
    cmdline = " ".join(process.cmdline())
    for module, kind in (
        ("fleet.cli", "fleet serve"),
        ("fleet.router", "router"),
        ("fleet.serving", "model server"),
    ):
        if f"-m {module}" in cmdline:
            return kind
    return cmdline


def test_the_demo_fleet_is_one_pack_server_one_dedicated_server_and_the_router(
    packed: tuple[str, Child, str], demo_resolved: list[ResolvedModel]
) -> None:
    url, child, mark = packed
    small = sorted(r.name for r in demo_resolved if r.name != BIG_MODEL)
    text = child.log_path.read_text()
    assert f"pack-0: {len(small)} models ({', '.join(small[:3])}, ...)" in text
    assert f"dedicated: {BIG_MODEL}" in text
    kinds = Counter(_kind(p) for p in _fleet_processes(mark))
    assert kinds == {"fleet serve": 1, "router": 1, "model server": 2}, kinds
    (routes_file,) = (child.log_path.parent / ".fleet" / "serve").glob("*/routes.json")
    backends = {r["model"]: r["backend"] for r in json.loads(routes_file.read_text())["routes"]}
    assert len(backends) == len(demo_resolved)
    pack_url = re.search(r"ready: pack-0 \((http://127\.0\.0\.1:\d+)\)", text)
    assert pack_url is not None, text
    for name in small:
        assert backends[name] == f"{pack_url.group(1)}/models/{name}"
    assert "/models/" not in backends[BIG_MODEL]
    ready = httpx.get(url + "/readyz", timeout=10).json()
    assert ready == {"status": "ready", "routes": len(demo_resolved), "down": {}}


def test_a_killed_pack_server_takes_down_its_routes_only_and_comes_back(
    packed: tuple[str, Child, str], demo_resolved: list[ResolvedModel]
) -> None:
    url, child, _ = packed
    in_pack = [r for r in demo_resolved if r.name != BIG_MODEL]
    routes = {r.model.route for r in in_pack}
    bodies = {r.model.route: random_records(r.inputs, 2, seed=5) for r in demo_resolved}
    seen: dict[str, Counter[int]] = {path: Counter() for path in bodies}
    big = {p: b for p, b in bodies.items() if p not in routes}
    stop = threading.Event()
    loads = [
        threading.Thread(target=_load, args=(url, big, seen, stop)),
        threading.Thread(target=_load, args=(url, {p: bodies[p] for p in routes}, seen, stop)),
    ]
    for thread in loads:
        thread.start()
    try:
        time.sleep(1)
        (server,) = _server_tree(child, "pack-0")
        server.kill()

        def down() -> dict[str, str]:
            return dict(httpx.get(url + "/readyz", timeout=10).json()["down"])

        _until("/readyz names every route of the pack", lambda: routes <= set(down()), 60, child)
        assert not set(big) & set(down())
        _until("fleet serve reports the pack down", _logged(child, ["DOWN: pack-0 ("]), 30, child)
        (line,) = [ln for ln in child.log_path.read_text().splitlines() if "DOWN: pack-0" in ln]
        assert "the process exited" in line
        assert all(r.name in line for r in in_pack), line
        _until("the pack is back", lambda: not down(), 600, child)
        _until("fleet serve reports it", _logged(child, ["ready again: pack-0"]), 60, child)
    finally:
        stop.set()
        for thread in loads:
            thread.join()
    assert not server.is_running() or server.status() == "zombie"
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in routes:
            assert client.post(path, json=bodies[path]).status_code == 200, path
    for path in big:
        assert seen[path][200] > 0 and set(seen[path]) == {200}, (path, seen[path])


def test_packed_and_dedicated_give_the_same_predictions(
    packed: tuple[str, Child, str],
    dedicated: tuple[str, Child, str],
    demo_resolved: list[ResolvedModel],
) -> None:
    with httpx.Client(timeout=30) as client:
        for i, r in enumerate(demo_resolved[::2]):
            records = random_records(r.inputs, 50, seed=20 + i)
            got = [client.post(u + r.model.route, json=records) for u in (packed[0], dedicated[0])]
            assert [a.status_code for a in got] == [200, 200], (r.name, got[0].text, got[1].text)
            assert_same(got[0].json()["predictions"], got[1].json()["predictions"])


def test_killed_and_frozen_model_servers_come_back_while_the_rest_serves(
    dedicated: tuple[str, Child, str], demo_fleet: Fleet, demo_resolved: list[ResolvedModel]
) -> None:
    url, child, _ = dedicated
    in_experiments = {v.model for e in demo_fleet.experiments for v in e.variants}
    killed, frozen = [r for r in demo_resolved if r.name not in in_experiments][:2]
    victims = {killed.model.route, frozen.model.route}
    bodies: dict[str, object] = {
        r.model.route: random_records(r.inputs, 2, seed=5) for r in demo_resolved
    }
    by_name = {r.name: r for r in demo_resolved}
    for e in demo_fleet.experiments:
        bodies[e.route] = random_records(by_name[e.variants[0].model].inputs, 2, seed=5)
    seen: dict[str, Counter[int]] = {path: Counter() for path in bodies}
    stop = threading.Event()
    others = {p: b for p, b in bodies.items() if p not in victims}
    loads = [
        threading.Thread(target=_load, args=(url, others, seen, stop)),
        threading.Thread(target=_load, args=(url, others, seen, stop)),
        threading.Thread(target=_load, args=(url, {p: bodies[p] for p in victims}, seen, stop)),
    ]
    for thread in loads:
        thread.start()
    try:
        time.sleep(1)
        hung = _server_tree(child, frozen.name)
        for process in hung:
            process.suspend()  # SIGSTOP: it still accepts connections, answers nothing
        # A model server is one process (no supervisor and worker).
        (server,) = _server_tree(child, killed.name)
        server.kill()

        def down() -> dict[str, str]:
            return dict(httpx.get(url + "/readyz", timeout=10).json()["down"])

        _until("/readyz names both routes", lambda: victims <= set(down()), 60, child)
        # fleet serve's own watch calls a server down after 3 s without an answer; the
        # router's health check (every 2 s) may name it first.
        reasons = [
            f"DOWN: {killed.name} (the process exited",
            f"DOWN: {frozen.name} (GET /readyz got no answer",
        ]
        _until("fleet serve reports both down, with the reason", _logged(child, reasons), 30, child)
        _until("both are back", lambda: not down(), 600, child)
        # Again the router may see a restarted server answer before fleet serve says so.
        back = [f"ready again: {killed.name}", f"ready again: {frozen.name}"]
        _until("fleet serve reports both ready again", _logged(child, back), 60, child)
        for path in victims:
            _until(f"{path} answers", lambda p=path: seen[p][200] > 0, 60, child)
    finally:
        stop.set()
        for thread in loads:
            thread.join()
    for process in [*hung, server]:
        assert not process.is_running() or process.status() == "zombie", process
    for path in others:
        assert seen[path][200] > 0 and set(seen[path]) == {200}, (path, seen[path])
    assert {p: seen[p] for p in victims} and all(seen[p][200] for p in victims)


@pytest.mark.parametrize("served", ["packed", "dedicated"])
def test_sigterm_leaves_no_process_behind_whatever_was_killed_before(
    request: pytest.FixtureRequest, served: str, demo_resolved: list[ResolvedModel]
) -> None:
    _, child, mark = request.getfixturevalue(served)
    # A server killed just before the stop: fleet serve is restarting it.
    victim, servers = ("pack-0", 2) if served == "packed" else (demo_resolved[-2].name, 11)
    (killed,) = _server_tree(child, victim)
    killed.kill()
    fleet = _fleet_processes(mark)
    # fleet serve, the router, every model server (the killed one may be back already)
    assert len(fleet) >= 1 + servers, [_kind(p) for p in fleet]
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(timeout=60) == 0, child.log_tail(40)
    _gone, alive = psutil.wait_procs(fleet, timeout=15)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    assert _fleet_processes(mark) == []
