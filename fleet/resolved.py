"""A model of the fleet pinned to one registry version, and its form as plain data.

`fleet.host.registry.Registry.resolve` makes these; the builds, the profiler, the router
config and the Pulumi components read them. `to_dict` / `from_dict` carry one across a
process boundary (the registry worker, a dynamic provider's inputs and state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleet.schema import Column
from fleet.spec import Model


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
        """Everything needed to make this model again in another process (JSON-safe)."""
        return {
            "name": self.name,
            "version": self.version,
            "model_uri": self.model_uri,
            "run_id": self.run_id,
            "source": self.source,
            "inputs": [c.to_dict() for c in self.inputs],
            "output": self.output,
            "model": self.model.model_dump(mode="json"),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ResolvedModel:
        """The inverse of `to_dict`."""
        return ResolvedModel(
            model=Model.model_validate(data["model"]),
            version=int(data["version"]),
            model_uri=str(data["model_uri"]),
            run_id=str(data["run_id"]),
            source=str(data.get("source", "")),
            inputs=[Column.from_dict(dict(c)) for c in data.get("inputs", [])],
            output=str(data.get("output", "")),
        )
