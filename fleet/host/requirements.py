"""The image's Python packages: pins exported from uv.lock, installed for the image's platform.

Model images and the router image take their pins from the same lock as the program
(`uv export`), and install exactly those wheels on the host with `uv pip install
--target` (from uv's cache where it can; nothing is downloaded inside an image).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from fleet.errors import BuildError
from fleet.hashing import file_digest
from fleet.host.environment import HOST, child_env

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


def uv() -> str:
    """The uv binary: `$UV` (as at process start), else `uv` on PATH."""
    found = HOST.uv or shutil.which("uv")
    if found is None:
        raise BuildError("uv is not on PATH; it exports the images' pins from uv.lock")
    return found


def exported_requirements(project_root: Path) -> str:
    """The main dependencies pinned by uv.lock, one `name==version[ ; marker]` per line.

    Dev and deploy groups (pytest, pulumi, ...) are left out. Cached per content of
    pyproject.toml and uv.lock, so repeated hashing costs one `uv export` per change.
    """
    lock = project_root / "uv.lock"
    project = project_root / "pyproject.toml"
    if not lock.is_file():
        raise BuildError(f"{lock} does not exist; images take their pins from it")
    return _export(str(project_root.resolve()), file_digest(lock), file_digest(project))


@functools.lru_cache(maxsize=16)
def _export(root: str, lock_digest: str, project_digest: str) -> str:
    proc = subprocess.run(
        [uv(), *EXPORT_ARGS, "--directory", root],
        capture_output=True,
        text=True,
        env=child_env({"UV_PYTHON_DOWNLOADS": "never"}),
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"uv export failed in {root}: {proc.stderr.strip()}")
    lines = [ln.strip() for ln in proc.stdout.splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    unpinned = [ln for ln in pins if "==" not in ln.split(";")[0]]
    if unpinned:
        raise BuildError(f"uv export gave unpinned requirements: {', '.join(unpinned)}")
    return "\n".join(pins) + "\n"


def install(pins: str, target: Path, platform: str) -> None:
    """`uv pip install --target` of exactly the pins (from uv's cache where it can)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    requirements = tmp.with_suffix(".txt")
    requirements.write_text(pins)
    argv = [uv(), "pip", "install", "--no-deps", "--compile-bytecode", "--target", str(tmp)]
    argv += ["--python-version", "3.11", "--python-platform", platform, "-r", str(requirements)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (tmp / "bentoml").is_dir():
        raise BuildError(f"installing the image's packages failed: {proc.stderr[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
