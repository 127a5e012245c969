"""`fleet serve`: the whole fleet on one machine, no Kubernetes.

The same model server and router code as in the images, as local processes on free
ports, the router in front with the same routes config format the Pulumi program puts in
a ConfigMap. With `packing.enabled` in models.yaml the packed models are placed into
packs as a deploy places them (`fleet.packing.place`, starting from the placement file
beside models.yaml) and each pack is one server process serving its models
under `/models/<name>`; each dedicated model, and with `--dedicated` every model, has a
server of its own. While it runs, a server that dies or stops answering is said so, with
the models it takes down, and started again on its port (`fleet.host.watch`); the router's
`/readyz` names their routes while it is down. Ctrl-C or SIGTERM stops every process of
the fleet, including what killed servers left behind (`fleet.host.processes.adopt_orphans`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from fleet.commands import add_fleet_args, fleet_of, registry
from fleet.errors import FleetError
from fleet.host.environment import LOCAL_HOME
from fleet.host.model_server import pack_command, pack_path, server_command
from fleet.host.model_store import ModelStore
from fleet.host.processes import (
    Child,
    Supervisor,
    adopt_orphans,
    free_port,
    port_is_free,
    stop_descendants,
)
from fleet.host.registry import Registry
from fleet.host.watch import Keeper
from fleet.packing import PlacementFile, place_fleet, placement_path, read_placement
from fleet.resolved import ResolvedModel
from fleet.routes import build_routes_config
from fleet.schema import random_records
from fleet.spec import Fleet

READY_TIMEOUT_S = 300.0


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the fleet on this machine: model servers and the router"
    )
    add_fleet_args(parser)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="MODEL",
        help="serve only this model (repeatable); experiments need all their variants",
    )
    parser.add_argument(
        "--dedicated",
        action="store_true",
        help="one server process per model, even with packing enabled in models.yaml",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="router port (default: 8000, or a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="router address (default 127.0.0.1)")
    parser.add_argument(
        "--ready-timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait per start"
    )
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class ServerPlan:
    """One model-server process of the fleet: a pack of models, or one model alone."""

    name: str
    """The pack's name (`pack-0`), or the model's."""
    models: tuple[ResolvedModel, ...]
    pack: bool

    def command(
        self, port: int, store: ModelStore, tags: Mapping[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment of the server, its models imported into `store` as `tags`."""
        if self.pack:
            return pack_command([(m, tags[m.name]) for m in self.models], port, store)
        (model,) = self.models
        return server_command(model, port, store, bento_model_tag=tags[model.name])

    def backend(self, url: str, model: ResolvedModel) -> str:
        """The base URL the router calls `model` at, the server being at `url`."""
        return url + pack_path(model.name) if self.pack else url

    def members(self, first: int | None = None) -> str:
        """`10 models (a, b, ...)`, naming the first `first`, for a pack; '' for one model."""
        if not self.pack:
            return ""
        names = [m.name for m in self.models]
        shown = names if first is None or len(names) <= first else [*names[:first], "..."]
        return f"{_count(len(names), 'model')} ({', '.join(shown)})"


def plan(
    fleet: Fleet, resolved: Sequence[ResolvedModel], models_file: str | Path
) -> tuple[list[ServerPlan], list[str]]:
    """The server processes that serve `resolved`, and the packed models placed by an
    estimate (no measurement of them in the placement file).

    The packed models go into the packs a deploy gives them: `fleet.packing.place` from
    the placement file beside `models_file`, under the fleet's memory policy.
    Every model that is not packed gets a server of its own.
    """
    by_name = {r.name: r for r in resolved}
    file = PlacementFile()
    if any(r.model.packed for r in resolved):
        file = read_placement(placement_path(models_file, fleet.packing))
    placement, estimated = place_fleet(fleet, resolved, file)
    servers = [
        ServerPlan(pack, tuple(by_name[m] for m in models), pack=True)
        for pack, models in placement.packs.items()
    ]
    servers += [ServerPlan(r.name, (r,), pack=False) for r in resolved if not r.model.packed]
    return servers, estimated


def run(args: argparse.Namespace) -> int:
    fleet = fleet_of(args)
    if args.dedicated:
        fleet = fleet.with_packing(False)
    if args.only:
        fleet = fleet.only(args.only)
    source = registry(args)
    _ensure_registry(source)
    resolved = source.resolve(fleet)
    plans, estimated = plan(fleet, resolved, args.models)
    _say_placement(plans, estimated, placement_path(args.models, fleet.packing))
    store = ModelStore.from_environment()

    run_dir = LOCAL_HOME / "serve" / str(os.getpid())
    sup = Supervisor(log_dir=run_dir / "logs")
    adopt_orphans()
    _stop_on_signals()
    keeper: Keeper | None = None
    try:
        servers: dict[str, Child] = {}
        tags: dict[str, str] = {}

        def start_and_wait(todo: list[ServerPlan]) -> None:
            for p in todo:
                port = free_port()
                argv, env = p.command(port, store, tags)
                servers[p.name] = sup.start(p.name, argv, env, f"http://127.0.0.1:{port}")
            sup.wait_ready([servers[p.name] for p in todo], "/readyz", args.ready_timeout, ready)

        def ready(child: Child) -> None:
            about = by_name[child.name].members(first=3)
            _say(f"  ready: {child.name} ({child.url})" + (f", {about}" if about else ""))

        for i, model in enumerate(resolved, 1):
            _say(f"[{i}/{len(resolved)}] preparing {model.name} v{model.version}")
            try:
                tags[model.name] = store.import_model(model, source)
            except FleetError as exc:  # one broken model does not keep the others down
                _say(f"  failed: {exc}")
        prepared = [r for r in resolved if r.name in tags]
        # A model that could not be prepared is left out of its pack; the rest serve.
        plans = [replace(p, models=tuple(m for m in p.models if m.name in tags)) for p in plans]
        plans = [p for p in plans if p.models]
        by_name = {p.name: p for p in plans}
        _say(f"starting {_count(len(plans), 'model server')} ...")
        start_and_wait(plans)
        # A port picked free can be taken by another server's own sockets before this one
        # binds it; a server that exited is started once more on a fresh port.
        retry = [p for p in plans if not servers[p.name].ready and not servers[p.name].alive()]
        for p in retry:
            _say(f"  retrying {p.name} on a new port ({servers[p.name].error})")
        if retry:
            start_and_wait(retry)

        backends = {m.name: p.backend(servers[p.name].url, m) for p in plans for m in p.models}
        config = build_routes_config(fleet, prepared, lambda r: backends[r.name])
        routes_path = run_dir / "routes.json"
        routes_path.write_text(json.dumps(config, indent=2))
        port = _router_port(args.port, args.host)
        router = sup.start(
            "router",
            [
                sys.executable,
                "-m",
                "fleet.router",
                "--config",
                str(routes_path),
                "--host",
                args.host,
                "--port",
                str(port),
            ],
            {},
            f"http://{args.host}:{port}",
        )
        sup.wait_ready([router], "/readyz", args.ready_timeout)
        if not router.ready:
            _say(f"error: the router did not start ({router.error}); its log:\n{router.log_tail()}")
            return 1
        _summary(router.url, resolved, plans, servers, fleet)
        keeper = Keeper(
            sup,
            [servers[p.name] for p in plans if servers[p.name].ready],
            say=_say,
            start_timeout_s=args.ready_timeout,
            about=lambda c: by_name[c.name].members(),
        )
        keeper.run(until=lambda: not router.alive())
        _say(f"the router stopped; its log:\n{router.log_tail()}")
        return 1
    except _Stop:
        _say("stopping ...")
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave orphans.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if keeper is not None:
            keeper.close()
        sup.stop_all()
        stop_descendants()


class _Stop(Exception):
    pass


def _stop_on_signals() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _ensure_registry(source: Registry) -> None:
    """Create the demo registry when the default local registry is empty."""
    if not source.is_local() or source.has_models():
        return
    from fleet.host.demo_registry import create_demo_registry

    _say(f"no registry at {source.uri}: creating the demo registry (about a minute, once)")
    LOCAL_HOME.mkdir(parents=True, exist_ok=True)
    create_demo_registry(source, LOCAL_HOME / "artifacts", progress=_say)


def _router_port(requested: int | None, host: str) -> int:
    if requested is not None:
        return requested
    return 8000 if port_is_free(8000, host) else free_port(host)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _say_placement(plans: list[ServerPlan], estimated: list[str], placement_file: Path) -> None:
    packs = [p for p in plans if p.pack]
    if not packs:
        return
    packed = sum(len(p.models) for p in packs)
    alone = [p.name for p in plans if not p.pack]
    dedicated = f", {_count(len(alone), 'dedicated model')}" if alone else ""
    _say(f"packing: {_count(packed, 'model')} in {_count(len(packs), 'pack')}{dedicated}")
    for p in packs:
        _say(f"  {p.name}: {p.members(first=3)}")
    if alone:
        _say(f"  dedicated: {', '.join(alone)}")
    if estimated:
        _say(
            f"  {_count(len(estimated), 'packed model')} without a measurement in "
            f"{placement_file}: placed by an estimated size"
        )


def _summary(
    url: str,
    resolved: list[ResolvedModel],
    plans: list[ServerPlan],
    servers: dict[str, Child],
    fleet: Fleet,
) -> None:
    server_of = {m.name: servers[p.name] for p in plans for m in p.models}
    down = [r for r in resolved if r.name not in server_of or not server_of[r.name].ready]
    for r in (r for r in resolved if r.name not in server_of):
        _say(f"\nmodel {r.name} could not be prepared (see above); its routes are not served")
    for p in plans:
        child = servers[p.name]
        if not child.ready:
            what = f"pack {p.name} of {p.members()}" if p.pack else f"model {p.name}"
            _say(f"\n{what} failed to start ({child.error}); last log lines:")
            _say(child.log_tail())
    _say(f"\nrouter: {url}    Swagger UI: {url}/docs    metrics: {url}/metrics\n")
    for r in resolved:
        if r not in down:
            body = json.dumps(random_records(r.inputs, 1, seed=1)[0])
            _say(f"curl -s {url}{r.model.route} -H 'content-type: application/json' -d '{body}'")
    by_name = {r.name: r for r in resolved}
    for exp in (e for e in fleet.experiments if all(v.model in server_of for v in e.variants)):
        body = json.dumps(random_records(by_name[exp.variants[0].model].inputs, 1, seed=1)[0])
        _say(
            f"curl -s {url}{exp.route} -H '{exp.sticky_header}: alice' "
            f"-H 'content-type: application/json' -d '{body}'"
        )
    for route, shadow in fleet.shadows().items():
        _say(
            f"shadow: {shadow.percent:g}% of {route} is copied to {shadow.model} "
            f"(fleet_router_shadow_* in {url}/metrics)"
        )
    if down:
        _say(f"\nDOWN ({len(down)}): " + ", ".join(r.model.route for r in down))
    _say(f"\nserving {len(resolved) - len(down)}/{len(resolved)} models; Ctrl-C stops them all")


def _say(text: str) -> None:
    print(text, flush=True)
