"""Content hashes: what decides a model image, reduced to one stable hex string.

Pure and cheap: it reads files (the service code, uv.lock via `uv export`, the CA
bundle) and hashes them with the model's identity and the build settings. No network,
no Docker, no MLflow. The same inputs always give the same hash; changing any of them
gives a new one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HASH_LENGTH = 24
# Bumped when the way images are built changes in a way the inputs below do not show.
FORMAT = 2
# The files of the `fleet` package that go into a model image (the service imports them).
SERVICE_GLOBS = ("fleet/__init__.py", "fleet/schema.py", "fleet/serving/*.py")
EXPORT_ARGS = (
    "export",
    "--frozen",
    "--format",
    "requirements.txt",
    "--no-hashes",
    "--no-dev",
    "--no-default-groups",
    "--no-emit-project",
    "--no-header",
    "--no-annotate",
)


class RequirementsError(RuntimeError):
    """uv.lock could not be exported to pinned requirements."""


def service_files(project_root: Path) -> list[Path]:
    """The service code, as paths relative to `project_root`, sorted."""
    found = {p.relative_to(project_root) for g in SERVICE_GLOBS for p in project_root.glob(g)}
    return sorted(found, key=str)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def exported_requirements(project_root: Path) -> str:
    """The main dependencies pinned by uv.lock, one `name==version[ ; marker]` per line.

    Dev and deploy groups (pytest, pulumi, ...) are left out. Cached per content of
    pyproject.toml and uv.lock, so repeated hashing costs one `uv export` per change.
    """
    lock = project_root / "uv.lock"
    project = project_root / "pyproject.toml"
    if not lock.is_file():
        raise RequirementsError(f"{lock} does not exist; model images take their pins from it")
    return _export(str(project_root.resolve()), file_digest(lock), file_digest(project))


@functools.lru_cache(maxsize=16)
def _export(root: str, lock_digest: str, project_digest: str) -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        raise RequirementsError("uv is not on PATH; it exports the image's pins from uv.lock")
    proc = subprocess.run(
        [uv, *EXPORT_ARGS, "--directory", root],
        capture_output=True,
        text=True,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
        check=False,
    )
    if proc.returncode != 0:
        raise RequirementsError(f"uv export failed in {root}: {proc.stderr.strip()}")
    lines = [ln.strip() for ln in proc.stdout.splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    unpinned = [ln for ln in pins if "==" not in ln.split(";")[0]]
    if unpinned:
        raise RequirementsError(f"uv export gave unpinned requirements: {', '.join(unpinned)}")
    return "\n".join(pins) + "\n"


def digest(manifest: Mapping[str, Any]) -> str:
    """A short hex hash of a JSON-serialisable manifest (key order does not matter)."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def code_manifest(project_root: Path) -> dict[str, str]:
    """Relative path → sha256 of every service file."""
    return {str(p): file_digest(project_root / p) for p in service_files(project_root)}
