"""How one model server is started on this machine: its argv and its environment.

The server is `python -m fleet.serving` from the current virtualenv, one process;
everything model-specific reaches it through environment variables
(`fleet.serving.config.ServerConfig`, and `FLEET_MODEL_DIR` for the model's folder in
the store). Used by `fleet serve` and the profiler's process backend; the model image
runs the same command on its bento's copy of the code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet.host.model_store import ModelStore, model_tag
from fleet.resolved import ResolvedModel
from fleet.serving.config import (
    ENV_MODEL_DIR,
    ENV_PACK,
    MLFLOW_FOLDER,
    PYTHON_FLAGS,
    THREAD_ENV,
    ServerConfig,
)

SERVICE = "fleet.serving.service:ModelServer"
"""The BentoML service `bentoml build` packs (the image runs `python -m fleet.serving`)."""
# The source root that holds the `fleet` package, so the server can import it.
SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent


def server_config(resolved: ResolvedModel, bento_model_tag: str | None = None) -> ServerConfig:
    """The model server settings of `resolved` (its signature and batching settings)."""
    batching = resolved.model.settings.batching
    return ServerConfig(
        model_name=resolved.name,
        model_tag=bento_model_tag or model_tag(resolved),
        inputs=tuple(resolved.inputs),
        batching=batching.enabled,
        max_batch_size=batching.max_batch_size,
        max_latency_ms=batching.max_latency_ms,
    )


def server_env(store: ModelStore) -> dict[str, str]:
    """Environment every local model server (and `bentoml build`) gets besides its model's."""
    return {
        **store.env(),
        # MLflow checks the model's pip requirements against the environment on load.
        "MLFLOW_ENABLE_LOGGED_MODEL_ENV_VALIDATION": "false",
        "PYTHONUNBUFFERED": "1",
        **THREAD_ENV,
    }


def server_command(
    resolved: ResolvedModel,
    port: int,
    store: ModelStore,
    *,
    bento_model_tag: str | None = None,
    host: str = "127.0.0.1",
) -> tuple[list[str], dict[str, str]]:
    """argv and environment that start one model server for `resolved` on host:port.

    The model must be in `store` (`ModelStore.import_model`). Start it with
    `fleet.host.processes.Supervisor.start`; it answers `GET /readyz` with 200 once the
    model is loaded.
    """
    config = server_config(resolved, bento_model_tag)
    env = {**config.to_env(), **server_env(store)}
    env[ENV_MODEL_DIR] = str(store.model_dir(config.model_tag) / MLFLOW_FOLDER)
    env["PYTHONPATH"] = str(SOURCE_ROOT)
    return serve_argv(host, port), env


def pack_command(
    models: Sequence[tuple[ResolvedModel, str]],
    port: int,
    store: ModelStore,
    *,
    host: str = "127.0.0.1",
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of one pack server: every model of `models` (each with its
    tag in `store`) in one process, under `pack_path(name)`."""
    entries = []
    for resolved, tag in models:
        model_dir = store.model_dir(tag) / MLFLOW_FOLDER
        entries.append({**server_config(resolved, tag).to_env(), ENV_MODEL_DIR: str(model_dir)})
    env = {**server_env(store), ENV_PACK: json.dumps(entries), "PYTHONPATH": str(SOURCE_ROOT)}
    return serve_argv(host, port), env


def pack_path(name: str) -> str:
    """Where a pack server serves model `name` (`<path>/predict`, `<path>/readyz`)."""
    return f"/models/{name}"


def serve_argv(host: str, port: int) -> list[str]:
    """`python -m fleet.serving` from the current interpreter."""
    return [sys.executable, *PYTHON_FLAGS, "-m", "fleet.serving", *server_args(host, port)]


def server_args(host: str, port: int) -> list[str]:
    """The server's options after `python -m fleet.serving` (the image's command too)."""
    return ["--host", host, "--port", str(port)]
