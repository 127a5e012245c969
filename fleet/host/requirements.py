"""The image's Python packages: pins exported from uv.lock, installed for the image's platform.

Model images and the router image take their pins from the same lock as the program
(`uv export`), and install exactly those wheels on the host with `uv pip install
--target` (from uv's cache where it can; nothing is downloaded inside an image).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
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


def install(pins: str, target: Path, platform: str, image_path: str) -> None:
    """`uv pip install --target` of exactly the pins (from uv's cache where it can), with
    bytecode compiled for where the packages will be in the image (`image_path`)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    requirements = tmp.with_suffix(".txt")
    requirements.write_text(pins)
    argv = [uv(), "pip", "install", "--no-deps", "--target", str(tmp)]
    argv += ["--python-version", "3.11", "--python-platform", platform, "-r", str(requirements)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (tmp / "bentoml").is_dir():
        raise BuildError(f"installing the image's packages failed: {proc.stderr[-3000:]}")
    compile_bytecode(tmp, image_path)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def compile_bytecode(tree: Path, image_path: str) -> None:
    """.pyc files for every module of `tree`, the same bytes on any runner.

    Source paths inside them are `image_path` (where the tree is in the image), not this
    runner's build folder, and they are checked by source hash, not by mtime (the layer
    has no times). A file that does not compile for this Python (a test file of a
    package, say) is left without bytecode, as uv would.
    """
    argv = [sys.executable, "-m", "compileall", "-q", "-j", "0", "-d", image_path]
    # Level 2 too: the model server runs with -OO (`fleet.serving.config.PYTHON_FLAGS`).
    argv += ["-o", "0", "-o", "2"]
    argv += ["--invalidation-mode", "checked-hash", str(tree)]
    subprocess.run(argv, capture_output=True, check=False)
