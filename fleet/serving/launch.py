"""Run one model server locally: import the MLflow model into BentoML, build the command.

Used by the profiler's process backend and by `fleet serve`. The server is
`bentoml serve fleet.serving.service:ModelServer` from the current virtualenv; everything
model-specific reaches it through environment variables (`fleet.serving.config`).
"""

from __future__ import annotations

from fleet.registry import ResolvedModel


def prepare_model(resolved: ResolvedModel, tracking_uri: str) -> str:
    """Import `resolved`'s MLflow model into the BentoML model store; return its tag.

    The store is `$BENTOML_HOME` (default `.fleet/bentoml`). Idempotent: a model already
    imported (same name, version and run id) is not imported again.
    """
    raise NotImplementedError


def server_command(
    resolved: ResolvedModel, port: int, *, bento_model_tag: str, host: str = "127.0.0.1"
) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment that start one model server for `resolved` on host:port.

    The batching settings come from `resolved.model.settings.batching`. Start it with
    `subprocess.Popen(argv, env={**os.environ, **env})`; it answers `GET /readyz` with 200
    once the model is loaded.
    """
    raise NotImplementedError
