"""The demo registry: small models of two families, trained on synthetic data.

- `match_probability_{city}_{TAXI|PHV}_{trafficaware|trafficunaware}`: logistic
  regressions over five double inputs, a float64 probability out.
- `demand_forecast_{city}`: decision-tree regressors over a long hour of the week, a
  double temperature and a boolean holiday flag. `demand_forecast_2` is a large random
  forest (about 200 MB resident once loaded), so that profiling has something to tell apart.

Every model gets a signature, an input example and the aliases `champion` and `challenger`.
`match_probability_2_TAXI_trafficaware` also has a version 2, trained with stronger
regularisation, and its `challenger` alias points there: the demo fleet shadows version 1
(`champion`) with it, to show predictions that differ.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow.pyfunc
import numpy as np
import pandas as pd

from fleet.host.registry import Registry

MATCH_INPUTS = (
    "route_decision_score",
    "farevalueinminor",
    "offer_throughput_rate",
    "eventtime",
    "backtoback",
)
MATCH_CITIES = (1, 2)
DEMAND_CITIES = (1, 2)
BIG_MODEL = "demand_forecast_2"
CHALLENGED = "match_probability_2_TAXI_trafficaware"
EXPERIMENT = "model-fleet-demo"


@dataclass(frozen=True)
class DemoModel:
    name: str
    train: Callable[[int], tuple[Any, pd.DataFrame, Any]]
    challenger: Callable[[int], tuple[Any, pd.DataFrame, Any]] | None = None
    """Trains the version 2 that the `challenger` alias picks, where there is one."""


def demo_models() -> list[DemoModel]:
    out = [
        DemoModel(
            name := f"match_probability_{city}_{product}_{traffic}",
            _train_match,
            _train_match_challenger if name == CHALLENGED else None,
        )
        for city in MATCH_CITIES
        for product in ("TAXI", "PHV")
        for traffic in ("trafficaware", "trafficunaware")
    ]
    out += [
        DemoModel(
            f"demand_forecast_{city}",
            _train_big_demand if f"demand_forecast_{city}" == BIG_MODEL else _train_demand,
        )
        for city in DEMAND_CITIES
    ]
    return out


def _train_match(seed: int, regularisation: float = 1.0) -> tuple[Any, pd.DataFrame, Any]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(500, len(MATCH_INPUTS))), columns=list(MATCH_INPUTS))
    weights = rng.normal(size=len(MATCH_INPUTS))
    y = (x.to_numpy() @ weights + rng.normal(scale=0.5, size=500)) > 0
    model = MatchProbability(LogisticRegression(C=1.0 / regularisation).fit(x, y))
    return model, x, model.predict(None, x)


def _train_match_challenger(seed: int) -> tuple[Any, pd.DataFrame, Any]:
    """The same data, a stronger L2 penalty: close to version 1, not equal."""
    return _train_match(seed, regularisation=50.0)


class MatchProbability(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """A classifier whose prediction is P(match) as float64, as the field's models return."""

    def __init__(self, clf: Any) -> None:
        self.clf = clf

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return self.clf.predict_proba(model_input[list(MATCH_INPUTS)])[:, 1].astype("float64")


def _demand_frame(rng: np.random.Generator, rows: int) -> tuple[pd.DataFrame, Any]:
    x = pd.DataFrame(
        {
            "hour_of_week": rng.integers(0, 168, size=rows).astype("int64"),
            "temperature": rng.normal(12.0, 8.0, size=rows),
            "holiday": rng.random(rows) < 0.1,
        }
    )
    hour = x["hour_of_week"].to_numpy() % 24
    y = 50 + 30 * np.sin(hour / 24 * 2 * np.pi) - 0.5 * x["temperature"] + 20 * x["holiday"]
    return x, y + rng.normal(scale=3.0, size=rows)


def _train_demand(seed: int) -> tuple[Any, pd.DataFrame, Any]:
    from sklearn.tree import DecisionTreeRegressor

    x, y = _demand_frame(np.random.default_rng(seed), 2000)
    model = DecisionTreeRegressor(max_depth=8, random_state=seed).fit(x, y)
    return model, x, model.predict(x)


def _train_big_demand(seed: int) -> tuple[Any, pd.DataFrame, Any]:
    from sklearn.ensemble import RandomForestRegressor

    x, y = _demand_frame(np.random.default_rng(seed), 60_000)
    model = RandomForestRegressor(n_estimators=40, random_state=seed, n_jobs=1).fit(x, y)
    return model, x, model.predict(x)


def create_demo_registry(
    registry: Registry, artifact_root: Path, progress: Callable[[str], None] = print
) -> list[str]:
    """Train and register every demo model into `registry`; their names. Idempotent per name.

    Runs in the registry worker (`fleet.host.worker demo-registry`), whose environment
    carries the registry's URI.
    """
    artifact_root.mkdir(parents=True, exist_ok=True)
    answer = registry.call(
        "demo-registry", {"artifact_root": str(artifact_root.resolve())}, progress=progress
    )
    return [str(n) for n in answer["names"]]


def train_and_register(artifact_root: Path, progress: Callable[[str], None]) -> list[str]:
    """The worker's side of `create_demo_registry`: MLflow's URIs come from the environment."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    # The pyfunc class travels inside the model, so the model loads without this package.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(
            EXPERIMENT, artifact_location=artifact_root.resolve().as_uri()
        )
    )
    names: list[str] = []
    for i, demo in enumerate(demo_models()):
        names.append(demo.name)
        versions = client.search_model_versions(f"name='{demo.name}'")
        if versions:
            # A run that stopped half-way, or an older demo, may have left aliases out.
            _ensure_aliases(client, demo.name, min(int(v.version) for v in versions))
            progress(f"  {demo.name}: already registered")
        else:
            version = _register(exp_id, demo.name, *demo.train(i))
            _ensure_aliases(client, demo.name, version)
            progress(f"  {demo.name}: registered version {version}")
        if demo.challenger is not None and len(versions) < 2:
            version = _register(exp_id, demo.name, *demo.challenger(i))
            client.set_registered_model_alias(demo.name, "challenger", str(version))
            progress(f"  {demo.name}: registered version {version} (challenger)")
    return names


def _register(exp_id: str, name: str, model: Any, x: pd.DataFrame, y: Any) -> int:
    """Log `model` with its signature and register it as a new version of `name`."""
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(x, np.asarray(y, dtype="float64"))
    with mlflow.start_run(experiment_id=exp_id, run_name=name):
        mlflow.log_param("family", name.rsplit("_", 3)[0])
        if isinstance(model, MatchProbability):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=model,
                signature=signature,
                input_example=x.head(3),
                registered_model_name=name,
                pip_requirements=_requirements(),
            )
        else:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                skops_trusted_types=["sklearn.tree._tree.Tree"],
                signature=signature,
                input_example=x.head(3),
                registered_model_name=name,
                pip_requirements=_requirements(),
            )
    return int(info.registered_model_version)


def _ensure_aliases(client: Any, name: str, version: int) -> None:
    """Point `champion` and `challenger` at `version` where they are not set (moved ones stay)."""
    present = client.get_registered_model(name).aliases
    for alias in ("champion", "challenger"):
        if alias not in present:
            client.set_registered_model_alias(name, alias, str(version))


def _requirements() -> list[str]:
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}"]
