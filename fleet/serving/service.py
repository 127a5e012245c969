"""The model server as a BentoML service, for `bentoml build` and `bentoml serve <bento>`.

The model image does not run this: BentoML serves through a supervisor process whose
only job is to watch one worker (116 MiB of the 367 MiB a model pod took), where
Kubernetes already restarts a container. The image runs the same app in one process
(`python -m fleet.serving`, see `fleet.serving.__main__`). This service mounts that app,
so a bento served by BentoML answers the same contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml

from fleet.serving.app import ModelApp
from fleet.serving.config import MLFLOW_FOLDER, ServerConfig
from fleet.serving.model import load_predictor

CONFIG = ServerConfig.from_env()


class _Mounted:
    """The ASGI app BentoML mounts; the service's worker gives it the loaded model."""

    app: ModelApp | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            raise RuntimeError("the model is not loaded yet")
        await self.app(scope, receive, send)


MOUNTED = _Mounted()


@bentoml.asgi_app(MOUNTED, path="/")
@bentoml.service(name="fleet-model", workers=1, logging={"access": {"enabled": False}})
class ModelServer:
    """Serves the MLflow model `CONFIG.model_tag` through `fleet.serving.app.ModelApp`."""

    bento_model = bentoml.models.BentoModel(CONFIG.model_tag)

    def __init__(self) -> None:
        model_dir = Path(self.bento_model.path_of(MLFLOW_FOLDER))
        MOUNTED.app = ModelApp(CONFIG, load_predictor(model_dir, CONFIG.inputs))
