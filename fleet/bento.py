"""A bento per model: the service code, the pinned requirements and the imported model.

Built by `bentoml build` in a subprocess (the service reads its model from the
environment at import time), versioned by the content hash, and cached by it: a bento
that exists under its hash is not built again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleet.hashing import SERVICE_GLOBS, exported_requirements
from fleet.registry import LOCAL_HOME, ResolvedModel
from fleet.serving import launch

LOCKS = LOCAL_HOME / "build" / "locks"


class BuildError(RuntimeError):
    """A bento or image build failed; the message names the model."""


@dataclass(frozen=True)
class BentoResult:
    """A bento in the BentoML store and whether this call built it."""

    tag: str
    path: Path
    content_hash: str
    built: bool


def make_bento(
    resolved: ResolvedModel, tracking_uri: str, project_root: Path, chash: str
) -> BentoResult:
    """The bento `<k8s-name>:<chash>` in the BentoML store, built unless it exists."""
    tag = f"{resolved.model.k8s_name}:{chash}"
    store = launch.bentoml_home() / "bentos" / resolved.model.k8s_name / chash
    if (store / "bento.yaml").is_file():
        return BentoResult(tag, store, chash, built=False)
    with locked(f"bento-{resolved.model.k8s_name}-{chash}"):
        if (store / "bento.yaml").is_file():  # built by another process meanwhile
            return BentoResult(tag, store, chash, built=False)
        _build(resolved, tracking_uri, project_root, chash, store)
    return BentoResult(tag, store, chash, built=True)


def _build(
    resolved: ResolvedModel, tracking_uri: str, project_root: Path, chash: str, store: Path
) -> None:
    model_tag = launch.prepare_model(resolved, tracking_uri)
    # BentoML reads the requirements file only inside the build context, by relative path.
    work = project_root / "build" / "bentofiles"  # build/ is git-ignored
    work.mkdir(parents=True, exist_ok=True)
    requirements = work / f"{chash}.requirements.txt"
    requirements.write_text(exported_requirements(project_root))
    bentofile = work / f"{chash}.bentofile.yaml"
    bentofile.write_text(
        json.dumps(
            {
                "service": launch.SERVICE,
                "name": resolved.model.k8s_name,
                "labels": {
                    "fleet.content-hash": chash,
                    "fleet.model": resolved.model.k8s_name,
                    "fleet.model-version": str(resolved.version),
                },
                "include": list(SERVICE_GLOBS),
                "python": {
                    "requirements_txt": str(requirements.relative_to(project_root)),
                    "lock_packages": False,
                },
                "models": [model_tag],
            }
        )
    )
    # A subprocess: the service module reads its model from the environment at import.
    argv = [sys.executable, "-m", "bentoml", "build", str(project_root)]
    argv += ["-f", str(bentofile), "--version", chash, "-o", "tag"]
    env = {**os.environ, **launch.server_config(resolved, model_tag).to_env()}
    env.update(launch.server_env())
    proc = subprocess.run(
        argv, env=env, cwd=project_root, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not (store / "bento.yaml").is_file():
        raise BuildError(f"model '{resolved.name}': bentoml build failed:\n{proc.stderr[-3000:]}")


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock across processes: concurrent builds of one thing wait, then reuse."""
    path = LOCKS.resolve() / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def copy_model(tag: str, models_dir: Path) -> None:
    """The imported model into the bento's own model store (`bentoml serve <bento>` reads it)."""
    name, version = tag.split(":")
    src = launch.bentoml_home() / "models" / name / version
    shutil.copytree(src, models_dir / name / version)
    (models_dir / name / "latest").write_text(version)
