"""`python -m fleet.serving [--host H] [--port P]`: one model server in one process.

The model image's command, and how `fleet serve` and the profiler run a model locally
(`fleet.host.model_server`). Which model and how to batch come from the environment
(`fleet.serving.config`); the MLflow model folder from `FLEET_MODEL_DIR`. With
`FLEET_PACK` it serves several models, each under `/models/<name>/` (a pack server).
Models are loaded before the port opens, so a server that listens is ready; one that
cannot load a model exits non-zero, naming it and why, and Kubernetes restarts its
container.

pandas imports pyarrow when it is installed, which costs a model server about 35 MiB it
does not use for a signature's numbers, booleans and strings: the server hides it, unless
`FLEET_PYARROW=1` (for a model whose own code needs pyarrow).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import sys
import time
import warnings
from pathlib import Path

# Under -OO (`fleet.serving.config.PYTHON_FLAGS`) MLflow cannot document its dataset
# sources, which serving does not use; it says so once per source at import.
warnings.filterwarnings("ignore", message="Failed to register a dataset source")
if os.environ.get("FLEET_PYARROW") != "1":
    sys.modules.setdefault("pyarrow", None)  # type: ignore[arg-type]

import uvicorn  # noqa: E402 - after hiding pyarrow

from fleet.serving.app import ModelApp, PackApp  # noqa: E402
from fleet.serving.config import (  # noqa: E402
    ENV_MODEL_DIR,
    ConfigError,
    ServerConfig,
    pack_from_env,
)
from fleet.serving.model import load_predictor  # noqa: E402

log = logging.getLogger("fleet.serving")
KEEP_ALIVE_S = 75
"""Idle keep-alive connections are kept longer than the router keeps them (60 s), so the
router, not the server, closes them: no request is sent on a connection being closed."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet.serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 3000))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        pack = pack_from_env()
        packed = pack is not None  # even of one model: its paths are under /models/<name>/
        if pack is None:
            model_dir = os.environ.get(ENV_MODEL_DIR)
            if not model_dir:
                raise ConfigError(f"{ENV_MODEL_DIR} is not set; the model server needs it")
            pack = [(ServerConfig.from_env(), model_dir)]
    except ConfigError as exc:
        log.error("cannot serve: %s", exc)
        return 2
    apps: dict[str, ModelApp] = {}
    for config, model_dir in pack:
        started = time.perf_counter()
        try:
            predictor = load_predictor(Path(model_dir), config.inputs)
        except Exception as exc:  # any model that cannot load stops the whole server
            log.exception("cannot serve model '%s' from %s: %s", config.model_name, model_dir, exc)
            return 2
        log.info(
            "model '%s' loaded in %.1f s from %s; predictor path: %s",
            config.model_name,
            time.perf_counter() - started,
            model_dir,
            predictor.kind,
        )
        apps[config.model_name] = ModelApp(config, predictor)
    app: ModelApp | PackApp = PackApp(apps) if packed else apps[pack[0][0].model_name]
    _settle()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    )
    try:
        server.run()
    finally:
        app.close()
    return 0


def _settle() -> None:
    """Give back what loading left behind: garbage, then the heap's free pages, and keep
    the survivors out of later collections (they live as long as the process)."""
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


if __name__ == "__main__":
    sys.exit(main())
