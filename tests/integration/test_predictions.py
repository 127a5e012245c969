"""Every served prediction is `pyfunc.predict`'s on the same records.

The model server's fast paths (`fleet.serving.model`) skip MLflow's per-call work; these
tests hold them to MLflow's answers: over 10,000 random valid records per demo model
through the real servers (both families, the random forest included, each on the path
it takes), and on small models saved here for the paths the demo does not take.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fleet.host.model_store import ModelStore, model_tag
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.schema import Column, random_records
from fleet.serving.config import MLFLOW_FOLDER
from fleet.serving.model import ArrayPredictor, FramePredictor, load_predictor
from tests.support import Servers, wait_for

pytestmark = pytest.mark.slow

RECORDS = 10_000
BATCH = 64  # the servers' max batch: a request is one model call


@pytest.fixture(scope="module")
def every_server(
    servers: Servers,
    model_store: ModelStore,
    demo_resolved: list[ResolvedModel],
    demo_registry: Registry,
) -> dict[str, str]:
    """A model server per demo model (the challenger's version 2 included), started together."""
    started = [servers.model_server(r, model_store, demo_registry).launch() for r in demo_resolved]
    wait_for(started, timeout_s=600)
    return {s.name: s.url for s in started}


def pyfunc_answers(model_dir: Path, records: list[dict[str, Any]]) -> list[Any]:
    """MLflow's own predictions, batch by batch as the server gets them."""
    model = mlflow.pyfunc.load_model(str(model_dir))
    out: list[Any] = []
    for i in range(0, len(records), BATCH):
        out += np.asarray(model.predict(pd.DataFrame(records[i : i + BATCH]))).tolist()
    return out


async def served_answers(url: str, records: list[dict[str, Any]]) -> list[Any]:
    """The server's predictions, `BATCH` records per request, 4 requests in flight."""
    bodies = [{"records": records[i : i + BATCH]} for i in range(0, len(records), BATCH)]
    out: list[Any] = [None] * len(bodies)
    limit = asyncio.Semaphore(4)
    async with httpx.AsyncClient(timeout=120) as http:

        async def post(i: int) -> None:
            async with limit:
                resp = await http.post(f"{url}/predict", json=bodies[i])
                assert resp.status_code == 200, resp.text
                out[i] = resp.json()

        await asyncio.gather(*(post(i) for i in range(len(bodies))))
    return [p for answer in out for p in answer]


def served_path(url: str) -> str:
    """The predictor path the server reports (`fleet_model_info{path}`)."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "fleet_model_info":
                return sample.labels["path"]
    raise AssertionError("no fleet_model_info")


def assert_same(got: list[Any], want: list[Any]) -> None:
    """Equal, or within 1e-12 relative where the BLAS sums rows in another order."""
    assert len(got) == len(want)
    exact = sum(g == w for g, w in zip(got, want, strict=True))
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert exact >= 0.99 * len(want), f"only {exact} of {len(want)} equal to the bit"


@pytest.mark.parametrize(
    ("family", "path"),
    [("match_probability", "pyfunc-unchecked"), ("demand_forecast", "native-array")],
)
def test_10000_random_records_per_demo_model_get_pyfunc_predict_answers(
    every_server: dict[str, str],
    demo_resolved: list[ResolvedModel],
    model_store: ModelStore,
    family: str,
    path: str,
) -> None:
    models = [r for r in demo_resolved if r.name.startswith(family)]
    assert models
    for i, resolved in enumerate(models):
        url = every_server[resolved.name]
        assert served_path(url) == path, resolved.name
        records = random_records(resolved.inputs, RECORDS, seed=100 + i)
        model_dir = model_store.model_dir(model_tag(resolved)) / MLFLOW_FOLDER
        got = asyncio.run(served_answers(url, records))
        assert_same(got, pyfunc_answers(model_dir, records))


# Models saved here, for the paths and fallbacks the demo models do not take.

X = pd.DataFrame(
    {
        "a": np.linspace(-3, 3, 200),
        "b": np.cos(np.linspace(0, 9, 200)),
        "c": np.arange(200) % 7 == 0,
    }
)
Y = 2 * X["a"] - X["b"] + 3 * X["c"]


def saved(tmp_path: Path, model: Any, x: pd.DataFrame, optional: str = "", **kw: Any) -> Path:
    """`model` saved with MLflow's sklearn flavor, its signature inferred from `x` (with
    column `optional` not required)."""
    path = tmp_path / "model"
    inferred = mlflow.models.infer_signature(x, np.asarray(Y, dtype="float64"))
    inputs = [ColSpec(c.type, c.name, required=c.name != optional) for c in inferred.inputs.inputs]
    signature = ModelSignature(inputs=Schema(inputs), outputs=inferred.outputs)
    mlflow.sklearn.save_model(model, path, signature=signature, **kw)
    return path


def columns_of(path: Path) -> list[Column]:
    schema = mlflow.models.Model.load(str(path)).get_input_schema()
    return [Column(s.name, s.type.name, s.required) for s in schema.inputs]


def test_a_pickled_estimator_is_served_on_arrays_with_pyfunc_answers(tmp_path: Path) -> None:
    # Fitted on columns b, a, c; the signature lists them in that order too, and the
    # array is built in the estimator's own order.
    x = X[["b", "a", "c"]]
    path = saved(tmp_path, LinearRegression().fit(x, Y), x, serialization_format="pickle")
    predictor = load_predictor(path, columns_of(path))
    assert isinstance(predictor, ArrayPredictor)
    records = random_records(columns_of(path), 2000, seed=1)
    assert_same(predictor(records), pyfunc_answers(path, records))


def test_an_estimator_that_needs_column_names_is_served_on_frames(tmp_path: Path) -> None:
    # A ColumnTransformer picks columns by name: on an array it cannot, so the load-time
    # probe sends the model to the DataFrame path.
    pipe = make_pipeline(
        ColumnTransformer([("scale", StandardScaler(), ["a", "b"])], remainder="passthrough"),
        LinearRegression(),
    )
    path = saved(tmp_path, pipe.fit(X, Y), X, serialization_format="cloudpickle")
    predictor = load_predictor(path, columns_of(path))
    assert isinstance(predictor, FramePredictor)
    assert predictor.kind == "pyfunc-unchecked"
    records = random_records(columns_of(path), 2000, seed=2)
    assert_same(predictor(records), pyfunc_answers(path, records))


def test_missing_optional_values_go_through_pyfunc_predict(tmp_path: Path) -> None:
    # An optional column: MLflow's schema enforcement decides how a batch with a missing
    # value is typed, so such a batch takes PyFuncModel.predict; a full one does not.
    x = X.astype({"c": "float64"})
    model = HistGradientBoostingRegressor(max_iter=20).fit(x, Y)  # takes missing values
    path = saved(tmp_path, model, x, optional="c", serialization_format="cloudpickle")
    columns = columns_of(path)
    assert [c.required for c in columns] == [True, True, False]
    calls: list[str] = []
    predictor = load_predictor(path, columns)
    assert isinstance(predictor, FramePredictor)
    checked, unchecked = predictor.checked, predictor.unchecked
    assert unchecked is not None
    predictor.checked = lambda frame: calls.append("checked") or checked(frame)
    predictor.unchecked = lambda frame: calls.append("unchecked") or unchecked(frame)
    full = random_records(columns, 50, seed=3)
    for r in full:
        r.setdefault("c", 1.0)
    assert_same(predictor(full), pyfunc_answers(path, full))
    gappy = [{"a": 1.0, "b": 2.0}, {"a": 0.5, "b": -1.0, "c": 3.0}]
    assert_same(predictor(gappy), pyfunc_answers(path, gappy))
    assert calls == ["unchecked", "checked"]
