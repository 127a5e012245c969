"""Assemble container images without `docker build`: layer tars plus a config, `docker load`.

Why not a Dockerfile: on the legacy builder every instruction (ENV, USER, CMD ...) commits
a container, and on the vfs storage driver every commit copies the whole root
filesystem, about a minute per instruction for a model image. Written directly, an image
is the base image's layers, one layer of Python packages shared by every model image
(loaded once per pin set), and one small layer with the bento; the image config carries
env, user, port, command and labels. Layers are reproducible: the same files give the
same diff id on any runner (fixed owners, modes and times, sorted entries), and the
config has a fixed creation time, so the same inputs give the same image id.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fleet.host import docker_cli

EPOCH = "1970-01-01T00:00:00Z"  # a fixed creation time: same inputs, same image id


@dataclass(frozen=True)
class Layer:
    """A layer tar on disk and its diff id (`sha256:` of the uncompressed tar)."""

    path: Path
    diff_id: str


class _Sha256Writer:
    """A write-only file that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.raw.write(data)


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The same files give the same layer on any runner: no owners, no times (tar.add
    # already walks directories in sorted order). Bytecode in a layer is hash-checked
    # (`requirements.compile_bytecode`), so a zero mtime does not make it stale.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.pax_headers = {}
    # Readable by the image's non-root user, writable by nobody but root.
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def write_layer(out: Path, trees: dict[str, Path], files: dict[str, bytes] | None = None) -> Layer:
    """A layer placing each directory of `trees` at its key (e.g. `opt/fleet/deps`) and each
    of `files` (path → content); parents are created with mode 755."""
    files = files or {}
    targets = [*trees, *files]
    parents = sorted(
        {"/".join(t.split("/")[:i]) for t in targets for i in range(1, t.count("/") + 1)}
    )
    with out.open("wb") as raw:
        writer = _Sha256Writer(raw)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            # The root itself at 755: an image made with `docker import` of a mktemp dir has
            # a 700 root, which a non-root user cannot even traverse to /usr/bin/python3.
            for parent in ["./", *parents]:
                info = tarfile.TarInfo(parent)
                info.type = tarfile.DIRTYPE
                tar.addfile(_normalize(info))
            for dest, src in sorted(trees.items()):
                tar.add(src, arcname=dest, recursive=True, filter=_normalize)
            for dest, content in sorted(files.items()):
                info = tarfile.TarInfo(dest)
                info.size = len(content)
                tar.addfile(_normalize(info), _BytesReader(content))
    return Layer(out, "sha256:" + writer.sha.hexdigest())


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk


def load_image(
    ref: str, base: dict[str, Any], layers: list[Layer | str], config: dict[str, Any]
) -> str:
    """`docker load` an image of `base`'s layers plus `layers`; returns the image id.

    A layer given as a bare diff id must already be in the engine (it is referenced, not
    sent): the engine looks layers up by chain id before it reads them from the archive.
    """
    diff_ids = [
        *base["RootFS"]["Layers"],
        *(x if isinstance(x, str) else x.diff_id for x in layers),
    ]
    image_config = {
        "architecture": base.get("Architecture", "amd64"),
        "os": base.get("Os", "linux"),
        "created": EPOCH,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    blob = json.dumps(image_config, sort_keys=True).encode()
    image_id = "sha256:" + hashlib.sha256(blob).hexdigest()
    manifest = [
        {
            "Config": "config.json",
            "RepoTags": [ref],
            "Layers": [f"{d.split(':')[1]}/layer.tar" for d in diff_ids],
        }
    ]
    with tempfile.TemporaryFile() as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for name, data in (
                ("manifest.json", json.dumps(manifest).encode()),
                ("config.json", blob),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, _BytesReader(data))
            for layer in layers:
                if isinstance(layer, Layer):
                    tar.add(layer.path, arcname=f"{layer.diff_id.split(':')[1]}/layer.tar")
        archive.seek(0)
        docker_cli.check("load", "--quiet", stdin=archive)
    return image_id
