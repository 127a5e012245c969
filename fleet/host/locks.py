"""File locks across processes: concurrent builds of one thing wait, then reuse its result."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator

from fleet.host.environment import LOCAL_HOME

LOCKS = LOCAL_HOME / "build" / "locks"


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock named `name`, held while the block runs."""
    path = LOCKS.resolve() / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
