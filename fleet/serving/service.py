"""The BentoML service that serves one model of the fleet (contract 1).

`POST /predict` takes `{"records": [record, ...]}` and answers a JSON array with one
prediction per record, in order. Records are validated against the model's signature by
the request model, so a bad record gets a 400 whose body names the field. `/livez`,
`/readyz` and `/metrics` are BentoML's own; `/metrics` also carries
`fleet_batch_size` (records per model call).

Which model and how to batch come from the environment (`fleet.serving.config`), so
this one module serves every model.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field, RootModel, create_model
from starlette.responses import Response

from fleet.schema import record_model
from fleet.serving.batcher import MicroBatcher
from fleet.serving.config import ServerConfig
from fleet.serving.model import PyfuncPredictor

CONFIG = ServerConfig.from_env()
MLFLOW_FOLDER = "mlflow_model"  # where bentoml.mlflow.import_model puts the MLflow model

_Record = record_model(CONFIG.model_name, list(CONFIG.inputs))
_Records: Any = Annotated[
    list[_Record],  # type: ignore[valid-type]
    Field(min_length=1, max_length=CONFIG.max_records),
]
PredictInput: type[BaseModel] = create_model("PredictInput", records=(_Records, ...))


class PredictOutput(RootModel[list[Any]]):
    """One prediction per record, in order (a number for single-output models)."""


BATCH_SIZE = bentoml.metrics.Histogram(
    name="fleet_batch_size",
    documentation="Records per model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)


@bentoml.service(
    name="fleet-model",
    workers=1,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
)
class ModelServer:
    """Serves the MLflow pyfunc model `CONFIG.model_tag` with micro-batching."""

    bento_model = bentoml.models.BentoModel(CONFIG.model_tag)

    def __init__(self) -> None:
        import mlflow.pyfunc

        model = mlflow.pyfunc.load_model(self.bento_model.path_of(MLFLOW_FOLDER))
        self.predictor = PyfuncPredictor(model, CONFIG.inputs)
        self.batcher = (
            MicroBatcher(
                self.predictor,
                max_batch_size=CONFIG.max_batch_size,
                max_latency_ms=CONFIG.max_latency_ms,
                on_batch=BATCH_SIZE.observe,
            )
            if CONFIG.batching
            else None
        )

    @bentoml.api(  # type: ignore[untyped-decorator]
        route="/predict", input_spec=PredictInput, output_spec=PredictOutput
    )
    async def predict(self, records: list[Any]) -> Response:
        """One prediction per record, in order."""
        rows = [r.model_dump(by_alias=True) for r in records]
        if self.batcher is not None:
            out = await self.batcher.submit(rows)
        else:
            out = await asyncio.to_thread(self.predictor, rows)
            BATCH_SIZE.observe(len(rows))
        # A ready response: BentoML's output path derives a JSON schema per response.
        return Response(json.dumps(out).encode(), media_type="application/json")
