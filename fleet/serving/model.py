"""The served model: records in, one prediction per record out, via the MLflow pyfunc.

The frame is built column by column with the signature's dtypes, so the pyfunc's own
schema enforcement sees exactly what `mlflow.pyfunc.load_model(uri).predict(df)` sees
for a DataFrame of the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fleet.schema import Column

_DTYPES: dict[str, Any] = {
    "double": np.float64,
    "float": np.float32,
    "long": np.int64,
    "integer": np.int32,
    "boolean": np.bool_,
    "string": object,
}


def records_frame(records: Sequence[dict[str, Any]], columns: Sequence[Column]) -> pd.DataFrame:
    """A DataFrame of `records` with the signature's column order and dtypes.

    A column holding missing values (optional inputs) keeps what pandas infers, since
    the signature's dtype cannot hold a missing integer or boolean.
    """
    data: dict[str, Any] = {}
    for col in columns:
        values = [r.get(col.name) for r in records]
        if any(v is None for v in values):
            data[col.name] = pd.Series(values, dtype=object if col.type == "string" else None)
        else:
            data[col.name] = np.asarray(values, dtype=_DTYPES[col.type])
    return pd.DataFrame(data)


def to_json_list(prediction: Any, rows: int) -> list[Any]:
    """One JSON-able prediction per row: a number for single-output models, else a row."""
    if isinstance(prediction, pd.DataFrame):
        if prediction.shape[1] == 1:
            prediction = prediction.iloc[:, 0]
        else:
            out: list[Any] = prediction.to_dict(orient="records")
            return out
    if isinstance(prediction, pd.Series):
        prediction = prediction.to_numpy()
    array = np.asarray(prediction)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if len(array) != rows:
        raise ValueError(f"the model returned {len(array)} predictions for {rows} records")
    result: list[Any] = array.tolist()
    return result


class PyfuncPredictor:
    """Calls an MLflow pyfunc model on lists of records."""

    def __init__(self, model: Any, columns: Sequence[Column]) -> None:
        self.model = model
        self.columns = tuple(columns)

    def __call__(self, records: list[dict[str, Any]]) -> list[Any]:
        frame = records_frame(records, self.columns)
        return to_json_list(self.model.predict(frame), len(records))
