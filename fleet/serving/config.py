"""Per-model settings of the model server, read from the environment.

One server code serves every model: the host layer (`fleet.host.model_server`) or the
model image sets these variables, and the server reads them once at start
(`ServerConfig.from_env`, `pack_from_env`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.schema import Column

ENV_MODEL_NAME = "FLEET_MODEL_NAME"
ENV_MODEL_TAG = "FLEET_MODEL_TAG"
ENV_INPUTS = "FLEET_INPUTS"
ENV_BATCHING = "FLEET_BATCHING"
ENV_MAX_BATCH_SIZE = "FLEET_MAX_BATCH_SIZE"
ENV_MAX_LATENCY_MS = "FLEET_MAX_LATENCY_MS"
ENV_MAX_RECORDS = "FLEET_MAX_RECORDS"
ENV_MAX_BODY_BYTES = "FLEET_MAX_BODY_BYTES"
MLFLOW_FOLDER = "mlflow_model"
"""Where `bentoml.mlflow.import_model` puts the MLflow model in a BentoML model's folder."""
ENV_MODEL_DIR = "FLEET_MODEL_DIR"
"""Where the MLflow model folder is: set by the image and by `fleet.host.model_server`,
outside `ServerConfig`, as it is a path of the machine the server runs on."""
ENV_PACK = "FLEET_PACK"
"""A pack server's models: a JSON list with one object per model holding that model's
variables (`ServerConfig.to_env` and `FLEET_MODEL_DIR`); unset for a one-model server."""

THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""Set for every model server (image and local): one model call runs at a time on one
core, as the pod's CPU request assumes, with no BLAS or OpenMP pool of threads beside it
competing with the event loop. (Memory is the same either way: 194 MiB RSS after load
for the demo's pyfunc LogisticRegression, with 5 threads against 7.)"""

PYTHON_FLAGS = ("-OO",)
"""The model server's interpreter flags: without docstrings (and asserts) it holds 23 MiB
less (measured: 187 against 210 MiB RSS idle, a pyfunc LogisticRegression), and serving
reads no docstring. The router keeps them: FastAPI's OpenAPI is made of them."""


class ConfigError(ValueError):
    """A model server setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class ServerConfig:
    """What one model server serves and how it batches."""

    model_name: str
    """The registered model's name, for logs and error messages."""
    model_tag: str
    """BentoML model store tag of the imported MLflow model."""
    inputs: tuple[Column, ...]
    """The signature's input columns; requests are validated against them."""
    batching: bool = True
    """Group concurrent requests into one model call."""
    max_batch_size: int = 64
    """Most records in one model call."""
    max_latency_ms: int = 20
    """Most time a lone request waits for others to join its batch (see `batcher`)."""
    max_records: int = 1000
    """Most records in one request."""
    max_body_bytes: int = 16 * 2**20
    """Largest request body; a larger one gets 413."""

    def to_env(self) -> dict[str, str]:
        """The environment variables that `from_env` reads back into this config."""
        return {
            ENV_MODEL_NAME: self.model_name,
            ENV_MODEL_TAG: self.model_tag,
            ENV_INPUTS: json.dumps([c.to_dict() for c in self.inputs]),
            ENV_BATCHING: "1" if self.batching else "0",
            ENV_MAX_BATCH_SIZE: str(self.max_batch_size),
            ENV_MAX_LATENCY_MS: str(self.max_latency_ms),
            ENV_MAX_RECORDS: str(self.max_records),
            ENV_MAX_BODY_BYTES: str(self.max_body_bytes),
        }

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> ServerConfig:
        """Read the settings; raises ConfigError naming the bad variable."""
        env = os.environ if env is None else env
        tag = _required(env, ENV_MODEL_TAG)
        try:
            inputs = tuple(Column.from_dict(c) for c in json.loads(_required(env, ENV_INPUTS)))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{ENV_INPUTS}: not a JSON list of columns: {exc}") from exc
        if not inputs:
            raise ConfigError(f"{ENV_INPUTS}: the model has no input columns")
        batching = env.get(ENV_BATCHING, "1").strip().lower()
        if batching not in ("0", "1", "true", "false"):
            raise ConfigError(f"{ENV_BATCHING}: expected 1 or 0, got '{batching}'")
        return ServerConfig(
            model_name=env.get(ENV_MODEL_NAME) or tag,
            model_tag=tag,
            inputs=inputs,
            batching=batching in ("1", "true"),
            max_batch_size=_positive(env, ENV_MAX_BATCH_SIZE, 64),
            max_latency_ms=_positive(env, ENV_MAX_LATENCY_MS, 20),
            max_records=_positive(env, ENV_MAX_RECORDS, 1000),
            max_body_bytes=_positive(env, ENV_MAX_BODY_BYTES, 16 * 2**20),
        )


def pack_from_env(env: Mapping[str, str] | None = None) -> list[tuple[ServerConfig, str]] | None:
    """The models of a pack server (config and model folder each), or None when
    `FLEET_PACK` is unset; raises ConfigError naming the bad entry."""
    env = os.environ if env is None else env
    raw = env.get(ENV_PACK)
    if not raw:
        return None
    try:
        entries = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PACK}: not JSON: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{ENV_PACK}: expected a non-empty JSON list of models")
    out: list[tuple[ServerConfig, str]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{ENV_PACK}[{i}]: expected an object of variables")
        try:
            config = ServerConfig.from_env({str(k): str(v) for k, v in entry.items()})
            out.append((config, _required(entry, ENV_MODEL_DIR)))
        except ConfigError as exc:
            raise ConfigError(f"{ENV_PACK}[{i}]: {exc}") from exc
    names = [c.model_name for c, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{ENV_PACK}: a model is listed twice: {sorted(names)}")
    return out


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise ConfigError(f"{name} is not set; the model server needs it")
    return value


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a positive integer, got '{raw}'") from None
    if value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value}")
    return value
