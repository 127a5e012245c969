"""`python -m fleet.router --config routes.json --host 127.0.0.1 --port 8000`."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from fleet.errors import RoutesConfigError
from fleet.router.app import create_app
from fleet.router.config import load_routes_config
from fleet.router.server import bounded_protocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet.router", description=__doc__)
    parser.add_argument("--config", required=True, help="routes config JSON (fleet routes)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--max-connections", type=int, default=512, help="size of the backend connection pool"
    )
    parser.add_argument(
        "--health-interval",
        type=float,
        default=2.0,
        help="seconds between health checks of the model servers (0: none)",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    try:
        config = load_routes_config(args.config)
    except RoutesConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(
        config, max_connections=args.max_connections, health_interval_s=args.health_interval
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        # One process per pod: Kubernetes scales the router by replicas.
        workers=1,
        # What one client can hold of the router (fleet/router/server.py).
        http=bounded_protocol(config.limits),
        ws="none",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
