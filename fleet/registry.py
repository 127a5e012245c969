"""Resolve the fleet against the MLflow model registry.

A version or alias becomes a concrete version, a model URI, a run id and the input
columns of the signature. The whole fleet is checked and every problem reported at once,
before anything is built or deployed. Reading the registry is the only thing the Pulumi
program does at program time (previews stay reads).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.schema import Column, columns_from_signature
from fleet.spec import Fleet, Model

LOCAL_HOME = Path(".fleet")


def default_tracking_uri(home: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI`, else the local sqlite registry under `.fleet/`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    home = (home or LOCAL_HOME).resolve()
    return f"sqlite:///{home / 'mlflow.db'}"


def is_default_local(uri: str, home: Path | None = None) -> bool:
    return uri == f"sqlite:///{(home or LOCAL_HOME).resolve() / 'mlflow.db'}"


class ResolutionError(RuntimeError):
    """One or more models could not be resolved; `problems` names each model."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class ResolvedModel:
    """A model of the fleet pinned to one registry version."""

    model: Model
    version: int
    model_uri: str
    run_id: str
    source: str
    inputs: list[Column] = field(default_factory=list)
    output: str = ""

    @property
    def name(self) -> str:
        return self.model.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            "source": self.source,
            "inputs": [c.to_dict() for c in self.inputs],
            "output": self.output,
        }


def resolve_fleet(fleet: Fleet, tracking_uri: str | None = None) -> list[ResolvedModel]:
    """Every model of `fleet` pinned to a version; raises ResolutionError listing all problems."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri or default_tracking_uri()
    missing = _missing_sqlite(uri)
    if missing is not None:
        # MLflow would create an empty registry there and then find none of the models.
        raise ResolutionError(
            [
                f"no MLflow registry at {uri} ({missing} does not exist): make one with "
                "`fleet demo-registry`, or point --tracking-uri / MLFLOW_TRACKING_URI at yours"
            ]
        )
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:
        raise ResolutionError([f"cannot open the MLflow registry at {uri}: {_first(exc)}"]) from exc
    unreachable = _unreachable(client)
    if unreachable is not None:
        raise ResolutionError([f"cannot reach the MLflow registry at {uri}: {unreachable}"])
    resolved: list[ResolvedModel] = []
    problems: list[str] = []
    for model in fleet.resolved_models():
        try:
            resolved.append(_resolve_one(client, model))
        except (MlflowException, ValueError) as exc:
            problems.append(_explain(model, exc))
    if problems:
        raise ResolutionError(problems)
    return resolved


def _missing_sqlite(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI when it does not exist, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    return None if path.exists() or path.name == ":memory:" else path


# One try, a short timeout: by default MLflow retries a refused connection for about four
# minutes, per call, so an unreachable server would hang a validation or preview for hours.
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def _unreachable(client: Any) -> str | None:
    """Why the registry cannot be reached at all (a connection error), else None."""
    import requests

    saved = {key: os.environ.get(key) for key in _PROBE_ENV}
    os.environ.update(_PROBE_ENV)
    try:
        client.search_registered_models(max_results=1)
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, requests.ConnectionError | requests.Timeout):
                return _first(exc)
            cause = cause.__cause__ or cause.__context__
        # Anything else (a rate limit, a server error) gets MLflow's usual retries below.
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return None


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resolve_one(client: Any, model: Model) -> ResolvedModel:
    from mlflow.models import get_model_info

    if model.alias is not None:
        mv = client.get_model_version_by_alias(model.name, model.alias)
    else:
        mv = client.get_model_version(model.name, str(model.version))
    version = int(mv.version)
    uri = f"models:/{model.name}/{version}"
    info = _model_info(client, get_model_info, uri)
    inputs = columns_from_signature(info.signature, model.name)
    output = str(info.signature.outputs.to_dict()) if info.signature.outputs else ""
    return ResolvedModel(
        model=model,
        version=version,
        model_uri=uri,
        run_id=mv.run_id or "",
        source=mv.source or "",
        inputs=inputs,
        output=output,
    )


def _model_info(client: Any, get_model_info: Any, uri: str) -> Any:
    import mlflow

    # get_model_info reads the tracking server through MLflow's global URIs.
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    mlflow.set_registry_uri(client._registry_uri)
    try:
        return get_model_info(uri)
    except Exception as exc:
        raise _MetadataError(f"cannot read the model's metadata at {uri}: {exc}") from exc
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


class _MetadataError(ValueError):
    pass


def _explain(model: Model, exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError):
        return text if f"model '{model.name}'" in text else f"model '{model.name}': {text}"
    code = getattr(exc, "error_code", "")
    what = f"alias '{model.alias}'" if model.alias is not None else f"version {model.version}"
    if code == "RESOURCE_DOES_NOT_EXIST" or "not found" in text.lower():
        return f"model '{model.name}': {what} not found in the registry ({text})"
    return f"model '{model.name}': cannot resolve {what}: {text}"
