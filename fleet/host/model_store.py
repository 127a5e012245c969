"""The BentoML store: where imported models and built bentos live, at a home fixed when made.

BentoML fixes its store at first use from `BENTOML_HOME`; this process never imports
BentoML for it. Imports run in the worker (`fleet.host.worker import-model`) and builds
in `bentoml build`, each a child process started with `BENTOML_HOME` set to this store's
home, so two stores (a test's and the default) can be used side by side on threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.errors import BuildError, FleetError
from fleet.host.environment import HOST, LOCAL_HOME, HostEnvironment
from fleet.host.locks import locked
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel


@dataclass(frozen=True)
class ModelStore:
    """A BentoML home: `models/`, `bentos/`, and one home per local server (`servers/`)."""

    home: Path
    """An absolute path."""

    @staticmethod
    def from_environment(env: HostEnvironment = HOST) -> ModelStore:
        """`$BENTOML_HOME` as it was at process start, else `.fleet/bentoml`."""
        return ModelStore(env.bentoml_home or (LOCAL_HOME / "bentoml").resolve())

    def env(self) -> dict[str, str]:
        """Environment of a child process that uses this store."""
        return {"BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true"}

    def model_dir(self, tag: str) -> Path:
        name, version = tag.split(":")
        return self.home / "models" / name / version

    def bento_dir(self, name: str, version: str) -> Path:
        return self.home / "bentos" / name / version

    def has_model(self, tag: str) -> bool:
        return (self.model_dir(tag) / "model.yaml").is_file()

    def import_model(self, resolved: ResolvedModel, registry: Registry) -> str:
        """Import `resolved`'s MLflow model from `registry`; return its tag. Idempotent."""
        tag = model_tag(resolved)
        if self.has_model(tag):
            return tag
        request = {
            "tag": tag,
            "model_uri": resolved.model_uri,
            "labels": {"fleet.model": resolved.name, "fleet.version": str(resolved.version)},
            "metadata": {"model_uri": resolved.model_uri, "run_id": resolved.run_id},
        }
        try:
            # Two callers importing one model into one store (parallel profiles, two
            # commands) wait for each other; the second finds it imported.
            with locked(f"import-{tag.replace(':', '-')}"):
                if self.has_model(tag):
                    return tag
                registry.check_access()
                registry.call("import-model", request, extra_env=self.env())
        except FleetError as exc:
            raise BuildError(
                f"model '{resolved.name}': cannot import {resolved.model_uri} into BentoML: {exc}"
            ) from exc
        return tag


def model_tag(resolved: ResolvedModel) -> str:
    """The BentoML model tag of a registry version: stable, so imports are idempotent."""
    return f"{resolved.model.k8s_name}:v{resolved.version}-{resolved.run_id[:16].lower()}"
