"""A ResolvedModel as plain data, so it can be a dynamic resource's input and state."""

from __future__ import annotations

from typing import Any

from fleet.registry import ResolvedModel
from fleet.schema import Column
from fleet.spec import Model


def resolved_to_dict(resolved: ResolvedModel) -> dict[str, Any]:
    """Everything a provider needs to rebuild `resolved` in another process."""
    return {**resolved.to_dict(), "model": resolved.model.model_dump(mode="json")}


def resolved_from_dict(data: dict[str, Any]) -> ResolvedModel:
    """The inverse of `resolved_to_dict`."""
    return ResolvedModel(
        model=Model.model_validate(data["model"]),
        version=int(data["version"]),
        model_uri=str(data["model_uri"]),
        run_id=str(data["run_id"]),
        source=str(data.get("source", "")),
        inputs=[Column.from_dict(dict(c)) for c in data.get("inputs", [])],
        output=str(data.get("output", "")),
    )
