"""`fleet serve`: the whole fleet on one machine, no Kubernetes.

The same model server and router code as in the images, as local processes: one model
server per model on a free port, the router in front with the same routes config format
the Pulumi program puts in a ConfigMap. While it runs, a model server that dies or stops
answering is said so and started again on its port (`fleet.host.watch`); the router's
`/readyz` names its routes while it is down. Ctrl-C or SIGTERM stops every process of the
fleet, including what killed servers left behind (`fleet.host.processes.adopt_orphans`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from types import FrameType
from typing import Any

from fleet.commands import add_fleet_args, fleet_of, registry
from fleet.errors import FleetError
from fleet.host.environment import LOCAL_HOME
from fleet.host.model_server import server_command
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
        "--port", type=int, default=None, help="router port (default: 8000, or a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="router address (default 127.0.0.1)")
    parser.add_argument(
        "--ready-timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait per start"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fleet = fleet_of(args)
    if args.only:
        fleet = fleet.only(args.only)
    source = registry(args)
    _ensure_registry(source)
    resolved = source.resolve(fleet)
    store = ModelStore.from_environment()

    run_dir = LOCAL_HOME / "serve" / str(os.getpid())
    sup = Supervisor(log_dir=run_dir / "logs")
    adopt_orphans()
    _stop_on_signals()
    keeper: Keeper | None = None
    try:
        servers: dict[str, Child] = {}
        tags: dict[str, str] = {}

        def start_and_wait(models: list[ResolvedModel]) -> None:
            for model in models:
                port = free_port()
                argv, env = server_command(model, port, store, bento_model_tag=tags[model.name])
                url = f"http://127.0.0.1:{port}"
                servers[model.name] = sup.start(model.name, argv, env, url)
            sup.wait_ready(
                [servers[m.name] for m in models],
                "/readyz",
                args.ready_timeout,
                on_ready=lambda c: _say(f"  ready: {c.name} ({c.url})"),
            )

        for i, model in enumerate(resolved, 1):
            _say(f"[{i}/{len(resolved)}] preparing {model.name} v{model.version}")
            try:
                tags[model.name] = store.import_model(model, source)
            except FleetError as exc:  # one broken model does not keep the others down
                _say(f"  failed: {exc}")
        prepared = [r for r in resolved if r.name in tags]
        _say(f"starting {len(prepared)} model servers ...")
        start_and_wait(prepared)
        # A port picked free can be taken by another server's own sockets before this one
        # binds it; a server that exited is started once more on a fresh port.
        retry = [r for r in prepared if not servers[r.name].ready and not servers[r.name].alive()]
        for model in retry:
            _say(f"  retrying {model.name} on a new port ({servers[model.name].error})")
        if retry:
            start_and_wait(retry)

        config = build_routes_config(fleet, prepared, lambda r: servers[r.name].url)
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
        _summary(router.url, resolved, servers, fleet)
        up = [c for c in servers.values() if c.ready]
        keeper = Keeper(sup, up, say=_say, start_timeout_s=args.ready_timeout)
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


def _summary(
    url: str, resolved: list[ResolvedModel], servers: dict[str, Child], fleet: Fleet
) -> None:
    down = [r for r in resolved if r.name not in servers or not servers[r.name].ready]
    for r in down:
        child = servers.get(r.name)
        if child is None:
            _say(f"\nmodel {r.name} could not be prepared (see above); its routes are not served")
            continue
        _say(f"\nmodel {r.name} failed to start ({child.error}); last log lines:")
        _say(child.log_tail())
    _say(f"\nrouter: {url}    Swagger UI: {url}/docs    metrics: {url}/metrics\n")
    for r in resolved:
        if r not in down:
            body = json.dumps(random_records(r.inputs, 1, seed=1)[0])
            _say(f"curl -s {url}{r.model.route} -H 'content-type: application/json' -d '{body}'")
    by_name = {r.name: r for r in resolved}
    for exp in (e for e in fleet.experiments if all(v.model in servers for v in e.variants)):
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
