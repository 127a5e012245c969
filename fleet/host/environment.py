"""The environment variables the host layer reads, read once when the process starts.

Environment variables are input, never state: nothing in model-fleet sets and restores
them. A child process that needs other values gets its own environment
(`child_env`). Tests and the Pulumi program pass explicit values instead of changing
the environment (`Registry`, `ModelStore` and the build settings take them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_HOME = Path(".fleet")
"""Where `fleet serve`, builds and the demo registry keep their files (git-ignored)."""


@dataclass(frozen=True)
class HostEnvironment:
    """The variables model-fleet reads; `HOST` holds those of this process."""

    tracking_uri: str | None = None
    """`MLFLOW_TRACKING_URI`: the registry when no --tracking-uri / stack config says."""
    tracking_token: str | None = field(default=None, repr=False)
    """`MLFLOW_TRACKING_TOKEN`: bearer token for a remote MLflow server."""
    tracking_username: str | None = None
    """`MLFLOW_TRACKING_USERNAME`: basic-auth user for a remote MLflow server."""
    tracking_password: str | None = field(default=None, repr=False)
    """`MLFLOW_TRACKING_PASSWORD`: basic-auth password for a remote MLflow server."""
    bentoml_home: Path | None = None
    """`BENTOML_HOME`: the BentoML store (default `.fleet/bentoml`)."""
    docker: str | None = None
    """`DOCKER`: the Docker CLI to call (default /usr/bin/docker, else `docker` on PATH)."""
    uv: str | None = None
    """`UV`: the uv binary that exports pins and installs image packages (else on PATH)."""

    @staticmethod
    def read(env: Mapping[str, str]) -> HostEnvironment:
        def get(name: str) -> str | None:
            return env.get(name) or None

        home = get("BENTOML_HOME")
        return HostEnvironment(
            tracking_uri=get("MLFLOW_TRACKING_URI"),
            tracking_token=get("MLFLOW_TRACKING_TOKEN"),
            tracking_username=get("MLFLOW_TRACKING_USERNAME"),
            tracking_password=get("MLFLOW_TRACKING_PASSWORD"),
            bentoml_home=Path(home).resolve() if home else None,
            docker=get("DOCKER"),
            uv=get("UV"),
        )


HOST = HostEnvironment.read(os.environ)
"""This process's environment, as it was when model-fleet was imported."""

# Variables a child process must not inherit from ours because it gets its own values.
_OWNED = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "BENTOML_HOME",
)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child process: ours, minus what we own, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _OWNED}
    env.update(extra)
    return env
