"""The served model: records in, one prediction per record out, through the cheapest
interface that gives what `mlflow.pyfunc.load_model(uri).predict(frame)` gives.

Three paths, chosen once at load (`load_predictor`), cheapest first:

- `native-array`: a scikit-learn model (MLflow's `sklearn` flavor, loaded by
  `mlflow.sklearn`) whose inputs are all required numbers or booleans. The estimator is
  loaded from its file as MLflow loads it (pickle, cloudpickle or skops), without
  importing MLflow, and called on a 2-D array built straight from the records. At load,
  it must answer random records exactly as it answers the same records as a DataFrame
  (what MLflow hands it); otherwise the next path serves it.
- `pyfunc-unchecked`: the pyfunc's own predict function (MLflow's `_predict_fn`) on a
  DataFrame built with the signature's column order and dtypes, which is what MLflow's
  schema enforcement would hand it: the request was validated against the signature
  already. For models MLflow loads with `mlflow.pyfunc.model` (a PythonModel) or
  `mlflow.sklearn`, whose signature is a plain column list. A batch with a missing
  optional value takes the next path, as MLflow decides how that column is typed.
- `pyfunc`: `PyFuncModel.predict` on that DataFrame, every flavor.

`tests/integration/test_predictions.py` checks each path against `pyfunc.predict` over
10,000 random records per demo model.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fleet.schema import Column, random_records

Records = list[dict[str, Any]]

_DTYPES: dict[str, Any] = {
    "double": np.float64,
    "float": np.float32,
    "long": np.int64,
    "integer": np.int32,
    "boolean": np.bool_,
    "string": object,
}
_NUMERIC = frozenset({"double", "float", "long", "integer", "boolean"})
# Loaders whose predict function takes the enforced DataFrame as is (see module doc).
_UNCHECKED_LOADERS = frozenset({"mlflow.pyfunc.model", "mlflow.sklearn"})
PROBE_RECORDS = 256
"""Random records the native path must answer exactly as the DataFrame path, at load."""


class ModelLoadError(RuntimeError):
    """The model folder cannot be served; the message says why."""


class Framer:
    """Makes DataFrames of records with the signature's column order and dtypes.

    Where every column is required and of one numeric type (all doubles, say), the frame
    is one 2-D array in the layout pandas gives a frame built column by column, made in a
    tenth of the time. A column holding missing values (optional inputs) keeps what
    pandas infers, since the signature's dtype cannot hold a missing integer or boolean.
    """

    def __init__(self, columns: Sequence[Column]) -> None:
        import pandas as pd

        self.columns = tuple(columns)
        self.names = [c.name for c in self.columns]
        self.index = pd.Index(self.names)
        types = {c.type for c in self.columns}
        one = next(iter(types)) if len(types) == 1 else None
        required = all(c.required for c in self.columns)
        self.block = _DTYPES[one] if one in _NUMERIC and required else None
        self._frame = pd.DataFrame
        self._series = pd.Series

    def __call__(self, records: Sequence[dict[str, Any]]) -> Any:
        names = self.names
        if self.block is not None:
            rows = np.array([[r[n] for n in names] for r in records], dtype=self.block)
            return self._frame(np.asfortranarray(rows), columns=self.index, copy=False)
        data: dict[str, Any] = {}
        for col in self.columns:
            values = [r.get(col.name) for r in records]
            if any(v is None for v in values):
                kind = object if col.type == "string" else None
                data[col.name] = self._series(values, dtype=kind)
            else:
                data[col.name] = np.asarray(values, dtype=_DTYPES[col.type])
        return self._frame(data)


def to_json_list(prediction: Any, rows: int) -> list[Any]:
    """One JSON-able prediction per row: a number for single-output models, else a row."""
    import pandas as pd

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


class FramePredictor:
    """Calls a predict function on the records as a DataFrame with the signature's dtypes.

    `unchecked` (the pyfunc's own predict function) takes batches without missing values;
    `checked` (`PyFuncModel.predict`, schema enforcement included) takes the others.
    """

    def __init__(
        self,
        kind: str,
        columns: Sequence[Column],
        checked: Callable[[Any], Any],
        unchecked: Callable[[Any], Any] | None = None,
    ) -> None:
        self.kind = kind
        self.columns = tuple(columns)
        self.frame = Framer(columns)
        self.checked = checked
        self.unchecked = unchecked
        self._optional = tuple(c.name for c in self.columns if not c.required)

    def __call__(self, records: Records) -> list[Any]:
        frame = self.frame(records)
        fn = self.checked if self.unchecked is None or self._missing(records) else self.unchecked
        return to_json_list(fn(frame), len(records))

    def _missing(self, records: Records) -> bool:
        names = self._optional
        return bool(names) and any(r.get(n) is None for r in records for n in names)


class ArrayPredictor:
    """Calls a scikit-learn estimator's predict function on a float64 array of the records.

    The columns go in the estimator's own feature order. A boolean or integer column becomes
    float64 here, where with a DataFrame scikit-learn converts it to the same float.
    """

    kind = "native-array"

    def __init__(
        self, predict: Callable[[Any], Any], order: Sequence[str], single: Sequence[str] = ()
    ) -> None:
        self.predict = predict
        self.order = tuple(order)
        self._single = [i for i, name in enumerate(self.order) if name in set(single)]
        """Positions of `float` (float32) columns, rounded as the DataFrame path rounds them."""

    def __call__(self, records: Records) -> list[Any]:
        order = self.order
        # Column-major, as scikit-learn gets a DataFrame's one float block: the BLAS picks
        # its kernel, and so its order of sums, by the layout; the same layout gives the
        # DataFrame path's answers to the bit.
        rows = [[r[name] for name in order] for r in records]
        array = np.array(rows, dtype=np.float64, order="F")
        for i in self._single:
            array[:, i] = array[:, i].astype(np.float32)
        return to_json_list(self.predict(array), len(records))


def load_predictor(model_dir: Path, columns: Sequence[Column]) -> ArrayPredictor | FramePredictor:
    """The cheapest faithful predictor of the MLflow model in `model_dir` (module doc)."""
    meta_path = model_dir / "MLmodel"
    try:
        meta = yaml.safe_load(meta_path.read_text())
        flavors: dict[str, Any] = meta["flavors"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{meta_path}: not an MLflow model: {exc}") from exc
    pyfunc_conf = flavors.get("python_function") or {}
    loader = pyfunc_conf.get("loader_module")
    numeric = all(c.required and c.type in _NUMERIC for c in columns)
    if loader == "mlflow.sklearn" and "sklearn" in flavors and numeric:
        native = _native_sklearn(model_dir, flavors["sklearn"], pyfunc_conf, columns)
        if native is not None:
            return native
    return _pyfunc(model_dir, meta, loader, columns)


def _native_sklearn(
    model_dir: Path, conf: dict[str, Any], pyfunc_conf: dict[str, Any], columns: Sequence[Column]
) -> ArrayPredictor | None:
    """The estimator on arrays, or None when it does not answer arrays as it does frames."""
    estimator = load_sklearn(model_dir, conf)
    predict = getattr(estimator, pyfunc_conf.get("predict_fn") or "predict", None)
    if predict is None:
        return None
    names = [c.name for c in columns]
    fitted = getattr(estimator, "feature_names_in_", None)
    order = [str(n) for n in fitted] if fitted is not None else names
    if sorted(order) != sorted(names):
        return None
    # Fitted on a DataFrame, scikit-learn warns once per array call that it has no
    # column names; the order above is the fitted one.
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    native = ArrayPredictor(predict, order, [c.name for c in columns if c.type == "float"])
    frames = FramePredictor("sklearn-frame", columns, predict)
    probe = random_records(list(columns), PROBE_RECORDS, seed=0)
    try:
        agrees = _same(native(probe), frames(probe))
    except Exception:  # any failure on arrays means: the frame path serves it
        return None
    return native if agrees else None


def _same(got: list[Any], want: list[Any]) -> bool:
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        if isinstance(a, list | dict) or isinstance(b, list | dict):
            if a != b:
                return False
        elif a != b and not (
            isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-12)
        ):
            return False
    return True


def load_sklearn(model_dir: Path, conf: dict[str, Any]) -> Any:
    """The estimator of an MLflow `sklearn` flavor, loaded as `mlflow.sklearn` loads it."""
    allowed = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true").strip().lower()
    if allowed in ("false", "0", "no"):
        raise ModelLoadError(
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false: MLflow refuses to load this "
            "model, and so does the model server"
        )
    path = model_dir / str(conf.get("pickled_model", "model.pkl"))
    form = conf.get("serialization_format", "pickle")
    if form == "skops":
        import skops.io

        return skops.io.load(path, trusted=conf.get("skops_trusted_types"))
    if form == "cloudpickle":
        import cloudpickle

        with path.open("rb") as f:
            return cloudpickle.load(f)
    if form == "pickle":
        with path.open("rb") as f:
            return pickle.load(f)  # the registry's model, loaded as MLflow loads it
    raise ModelLoadError(f"{model_dir}: unknown sklearn serialization format '{form}'")


def _pyfunc(
    model_dir: Path, meta: dict[str, Any], loader: str | None, columns: Sequence[Column]
) -> FramePredictor:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(model_dir))
    checked = model.predict
    plain = (
        loader in _UNCHECKED_LOADERS
        and not meta.get("is_signature_from_type_hint")
        and not meta.get("type_hint_from_example")
        and not model.metadata.get_params_schema()
    )
    predict_fn = getattr(model, "_predict_fn", None)
    if not plain or predict_fn is None:
        return FramePredictor("pyfunc", columns, checked)
    return FramePredictor("pyfunc-unchecked", columns, checked, predict_fn)
