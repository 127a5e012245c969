"""Run one model server locally: import the MLflow model into BentoML, build the command.

Used by the profiler's process backend and by `fleet serve`. The server is
`bentoml serve fleet.serving.service:ModelServer` from the current virtualenv; everything
model-specific reaches it through environment variables (`fleet.serving.config`).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.registry import LOCAL_HOME, ResolvedModel
from fleet.serving.config import ServerConfig

SERVICE = "fleet.serving.service:ModelServer"
# The source root that holds the `fleet` package, so `bentoml serve` can import it.
SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent
_STORE_LOCK = threading.Lock()


def bentoml_home() -> Path:
    """The BentoML store: `$BENTOML_HOME`, else `.fleet/bentoml` (made absolute)."""
    env = os.environ.get("BENTOML_HOME")
    return Path(env).resolve() if env else (LOCAL_HOME / "bentoml").resolve()


def model_tag(resolved: ResolvedModel) -> str:
    """The BentoML model tag of a registry version: stable, so imports are idempotent."""
    return f"{resolved.model.k8s_name}:v{resolved.version}-{resolved.run_id[:16].lower()}"


def prepare_model(resolved: ResolvedModel, tracking_uri: str) -> str:
    """Import `resolved`'s MLflow model into the BentoML model store; return its tag.

    The store is `$BENTOML_HOME` (default `.fleet/bentoml`). Idempotent: a model already
    imported (same name, version and run id) is not imported again.
    """
    tag = model_tag(resolved)
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
        return tag
    except NotFound:
        pass
    import mlflow

    # download_artifacts resolves models:/ URIs through MLflow's global registry URI.
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        bentoml.mlflow.import_model(
            tag,
            resolved.model_uri,
            labels={"fleet.model": resolved.name, "fleet.version": str(resolved.version)},
            metadata={"model_uri": resolved.model_uri, "run_id": resolved.run_id},
        )
    except Exception as exc:
        raise RuntimeError(
            f"model '{resolved.name}': cannot import {resolved.model_uri} into BentoML: {exc}"
        ) from exc
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    return tag


def server_config(resolved: ResolvedModel, bento_model_tag: str) -> ServerConfig:
    """The model server settings of `resolved` (its signature and batching settings)."""
    batching = resolved.model.settings.batching
    return ServerConfig(
        model_name=resolved.name,
        model_tag=bento_model_tag,
        inputs=tuple(resolved.inputs),
        batching=batching.enabled,
        max_batch_size=batching.max_batch_size,
        max_latency_ms=batching.max_latency_ms,
    )


def server_command(
    resolved: ResolvedModel, port: int, *, bento_model_tag: str, host: str = "127.0.0.1"
) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment that start one model server for `resolved` on host:port.

    The batching settings come from `resolved.model.settings.batching`. Start it with
    `subprocess.Popen(argv, env={**os.environ, **env})`; it answers `GET /readyz` with 200
    once the model is loaded.
    """
    env = {**server_config(resolved, bento_model_tag).to_env(), **server_env()}
    env["BENTOML_HOME"] = str(server_home(port))
    return serve_argv(host, port), env


def server_home(port: int) -> Path:
    """A BentoML home of its own for the server on `port`, sharing the model store.

    BentoML keeps Prometheus' multiprocess files in `$BENTOML_HOME` and wipes them when a
    server starts, so servers sharing one home would mix and erase each other's metrics.
    """
    store = bentoml_home()
    home = store / "servers" / str(port)
    home.mkdir(parents=True, exist_ok=True)
    models = home / "models"
    if not models.is_symlink():
        (store / "models").mkdir(parents=True, exist_ok=True)
        models.symlink_to(store / "models", target_is_directory=True)
    return home


def serve_argv(host: str, port: int, working_dir: Path = SOURCE_ROOT) -> list[str]:
    """`bentoml serve` of the fleet service from the current interpreter."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE,
        "--working-dir",
        str(working_dir),
        "--host",
        host,
        "--port",
        str(port),
    ]


def server_env() -> dict[str, str]:
    """Environment every local model server gets besides its model's settings."""
    return {
        "BENTOML_HOME": str(bentoml_home()),
        "BENTOML_DO_NOT_TRACK": "true",
        # MLflow checks the model's pip requirements against the environment on load.
        "MLFLOW_ENABLE_LOGGED_MODEL_ENV_VALIDATION": "false",
        "PYTHONUNBUFFERED": "1",
    }


def _bentoml() -> Any:
    """bentoml, with its store at `bentoml_home()` even if it was imported earlier."""
    home = str(bentoml_home())
    os.environ.setdefault("BENTOML_HOME", home)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer as c
    from bentoml._internal.models import ModelStore

    with _STORE_LOCK:
        if c.bentoml_home.get() != home:
            # BentoML fixes its stores at first use; a process that imported it under
            # another BENTOML_HOME (a test session, a long-lived program) must move them
            # all, or the model lands in a store the server and `bentoml build` never look
            # in. Under a lock and with the home set last, so that a second thread (the
            # profiler runs models in parallel) never sees a new home with the old stores.
            for provider, sub in (
                (c.model_store_dir, "models"),
                (c.bento_store_dir, "bentos"),
                (c.tmp_bento_store_dir, "tmp"),
                (c.env_store_dir, "envs"),
            ):
                provider.set(os.path.join(home, sub))
                os.makedirs(os.path.join(home, sub), exist_ok=True)
            c.model_store.set(ModelStore(os.path.join(home, "models")))
            c.bento_store.set(BentoStore(os.path.join(home, "bentos")))
            c.bentoml_home.set(home)
    return bentoml


def wait_ready(
    base_url: str, timeout_s: float = 120.0, alive: Callable[[], bool] | None = None
) -> None:
    """Poll `GET {base_url}/readyz` until it answers 200; raises TimeoutError otherwise.

    `alive`, if given, is called between polls (e.g. `lambda: proc.poll() is None`); a
    false answer means the server died and raises RuntimeError at once.
    """
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the model server at {base_url} exited before it was ready")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the model server at {base_url} was not ready after {timeout_s:.0f} s")
