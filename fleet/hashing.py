"""Content hashes: what decides an image, reduced to one stable hex string.

Pure: it reads files and hashes them; no network, no Docker, no MLflow. The same inputs
always give the same hash; changing any of them gives a new one. The code of an image
is exactly the files it ships (`MODEL_IMAGE_CODE`, `ROUTER_IMAGE_CODE`): the image's
package plus the two core modules it imports (`fleet.schema`, `fleet.errors`). A test
(tests/unit/test_layout.py) proves that the packages import nothing else of the project,
so host-side edits (the CLI, the host layer, the demo, the profiler) rebuild no image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HASH_LENGTH = 24
# Bumped when the way images are built changes in a way the inputs below do not show.
FORMAT = 4
_SHARED = ("fleet/__init__.py", "fleet/errors.py", "fleet/schema.py")
MODEL_IMAGE_CODE = (*_SHARED, "fleet/serving/*.py")
"""The files of the model image's code (the bento's `include`), relative to the project."""
ROUTER_IMAGE_CODE = (*_SHARED, "fleet/router/*.py")
"""The files of the router image's code."""


def image_files(project_root: Path, globs: tuple[str, ...]) -> list[Path]:
    """The files matching `globs`, as paths relative to `project_root`, sorted."""
    found = {p.relative_to(project_root) for g in globs for p in project_root.glob(g)}
    return sorted(found, key=str)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest(manifest: Mapping[str, Any]) -> str:
    """A short hex hash of a JSON-serialisable manifest (key order does not matter)."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def code_manifest(project_root: Path, globs: tuple[str, ...]) -> dict[str, str]:
    """Relative path → sha256 of every file of an image's code."""
    return {str(p): file_digest(project_root / p) for p in image_files(project_root, globs)}
