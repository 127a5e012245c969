"""`python -m fleet.host.worker COMMAND`: the child process that does MLflow and BentoML work.

A process entry point of the host layer: MLflow and BentoML read their URIs,
credentials and store from the environment at start, and this process is started with
exactly the environment one call needs (`Registry.call`). The request is JSON on stdin;
progress lines go to stdout, then the answer as one line after `ANSWER_PREFIX`.

Commands:
- `resolve`: `{"models": [Model...]}` → `{"resolved": [ResolvedModel...], "problems": [str]}`
- `has-models`: `{}` → `{"has_models": bool}`
- `import-model`: `{"tag", "model_uri", "labels", "metadata"}` → `{"tag"}`: the MLflow
  model imported into the BentoML store at `$BENTOML_HOME`
- `demo-registry`: `{"artifact_root"}` → `{"names": [str]}` (`fleet.host.demo_registry`)
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from fleet.host.registry import ANSWER_PREFIX
from fleet.resolved import ResolvedModel
from fleet.schema import columns_from_signature
from fleet.spec import Model


def resolve(request: dict[str, Any]) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()  # the URIs and credentials of this process's environment
    resolved: list[dict[str, Any]] = []
    problems: list[str] = []
    for raw in request["models"]:
        model = Model.model_validate(raw)
        try:
            resolved.append(_resolve_one(client, model).to_dict())
        except (MlflowException, ValueError) as exc:
            problems.append(_explain(model, exc))
    return {"resolved": resolved, "problems": problems}


def _resolve_one(client: Any, model: Model) -> ResolvedModel:
    from mlflow.models import get_model_info

    if model.alias is not None:
        mv = client.get_model_version_by_alias(model.mlflow_name, model.alias)
    else:
        mv = client.get_model_version(model.mlflow_name, str(model.version))
    version = int(mv.version)
    uri = f"models:/{model.mlflow_name}/{version}"
    try:
        info = get_model_info(uri)
    except Exception as exc:
        raise ValueError(f"cannot read the model's metadata at {uri}: {_first(exc)}") from exc
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


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain(model: Model, exc: Exception) -> str:
    text = _first(exc)
    if isinstance(exc, ValueError):
        return text if f"model '{model.name}'" in text else f"model '{model.name}': {text}"
    code = getattr(exc, "error_code", "")
    what = f"alias '{model.alias}'" if model.alias is not None else f"version {model.version}"
    if code == "RESOURCE_DOES_NOT_EXIST" or "not found" in text.lower():
        return f"model '{model.name}': {what} not found in the registry ({text})"
    return f"model '{model.name}': cannot resolve {what}: {text}"


def has_models(request: dict[str, Any]) -> dict[str, Any]:
    from mlflow import MlflowClient

    return {"has_models": bool(MlflowClient().search_registered_models(max_results=1))}


def import_model(request: dict[str, Any]) -> dict[str, Any]:
    import bentoml

    tag = str(request["tag"])
    try:
        bentoml.models.get(tag)
        return {"tag": tag}
    except bentoml.exceptions.NotFound:
        pass
    bentoml.mlflow.import_model(
        tag, request["model_uri"], labels=request["labels"], metadata=request["metadata"]
    )
    return {"tag": tag}


def demo_registry(request: dict[str, Any]) -> dict[str, Any]:
    from pathlib import Path

    from fleet.host.demo_registry import train_and_register

    names = train_and_register(Path(request["artifact_root"]), progress=_progress)
    return {"names": names}


def _progress(line: str) -> None:
    print(line, flush=True)


COMMANDS = {
    "resolve": resolve,
    "has-models": has_models,
    "import-model": import_model,
    "demo-registry": demo_registry,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: python -m fleet.host.worker {{{','.join(COMMANDS)}}}", file=sys.stderr)
        return 2
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    answer = COMMANDS[argv[0]](json.loads(sys.stdin.read()))
    print(ANSWER_PREFIX + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
