"""The report cache: one JSON file per content hash, `.fleet/profiles/<content_hash>.json`.

The content hash names the model image (model, service code, pinned requirements, base
image), so a report found under it measured exactly what would ship. Only reports that
passed the gate are stored; failed ones go to `failed/` beside them for a person to read.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from profiler.report import Report

DEFAULT_DIR = Path(".fleet/profiles")
_HASH = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class ProfileCache:
    """Reports keyed by content hash in one folder."""

    def __init__(self, root: Path = DEFAULT_DIR) -> None:
        self.root = Path(root)

    def path(self, content_hash: str) -> Path:
        if not _HASH.match(content_hash):
            raise ValueError(f"'{content_hash}' is not a content hash")
        return self.root / f"{content_hash}.json"

    def get(self, content_hash: str) -> Report | None:
        """The stored report, or None when there is none (or it cannot be read)."""
        path = self.path(content_hash)
        try:
            report = Report.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None  # a missing, torn or old-schema report means: profile again
        if report.content_hash != content_hash or not report.passed:
            return None
        return report

    def put(self, report: Report) -> Path:
        """Store `report` (a failed one under failed/); returns the file written."""
        path = self.path(report.content_hash)
        if not report.passed:
            path = path.parent / "failed" / path.name
        _write_atomic(path, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


def _write_atomic(path: Path, text: str) -> None:
    # Parallel profiles write side by side; a reader must never see half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
