"""Pack images: the model images of a pack stacked into one image, nothing built again.

Every model image is the base image's layers, the shared packages layer, and one layer of
its own holding its bento at `/opt/fleet/models/<k8s-name>` (`fleet.host.images`). Those
own layers never overlap, so a pack image is the shared layers plus each member's own
layer, with a config whose `FLEET_PACK` names every member: the server serves them all in
one process (`fleet.serving`, pack mode). A new version of one model changes one layer;
the pack's image is new, but the registry already holds every other layer and the push
sends only that one's reference (`docker push` mounts or skips the rest).

The members' own layers come from this host's kept layer tars (`images.keep_layer`, written
when it built them); for a member built on another runner, the layer is made again from
the files of its pulled image and must come out with the same diff id (layers are
reproducible, `fleet.host.image_layers`).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import BuildError
from fleet.hashing import FORMAT, digest
from fleet.host import docker_cli, image_layers
from fleet.host.images import (
    BUILD_ROOT,
    CA_PATH,
    PORT,
    UID,
    BuildSettings,
    ImageResult,
    _base,
    _record,
    bento_dir,
    built_here,
    image_file,
    kept_layer_path,
    model_env,
    runtime_env,
)
from fleet.host.locks import locked
from fleet.host.model_server import server_args
from fleet.resolved import ResolvedModel
from fleet.serving.config import ENV_PACK, PYTHON_FLAGS


@dataclass(frozen=True)
class Member:
    """One model of a pack and its model image (by digest where it was pushed)."""

    resolved: ResolvedModel
    image: str
    content_hash: str


def pack_hash(pack: str, members: Sequence[tuple[str, str]]) -> str:
    """Hash of a pack image: its name and each member's (name, content hash)."""
    return digest({"format": FORMAT, "kind": "pack", "pack": pack, "models": sorted(members)})


def pack_ref(registry: str, pack: str, chash: str) -> str:
    """`<registry>/<pack>:<hash>`."""
    return f"{registry}/{pack}:{chash}"


def pack_config(pack: str, members: Sequence[ResolvedModel], base_env: list[str]) -> dict[str, Any]:
    """The pack image's config: the base's env, the server's, and `FLEET_PACK`."""
    ordered = sorted(members, key=lambda r: r.name)
    env = dict(e.split("=", 1) for e in base_env)
    # Every member's bento holds the same `fleet` code (the content hash covers it).
    env.update(runtime_env(ordered[0]))
    env[ENV_PACK] = json.dumps([model_env(r) for r in ordered], sort_keys=True)
    argv = ["/usr/bin/python3", *PYTHON_FLAGS, "-m", "fleet.serving"]
    return {
        "Env": [f"{k}={v}" for k, v in env.items()],
        "User": f"{UID}:{UID}",
        "ExposedPorts": {f"{PORT}/tcp": {}},
        "Cmd": [*argv, *server_args("0.0.0.0", PORT)],
        "WorkingDir": "/tmp",
        "Labels": {"fleet.pack": pack, "fleet.models": ",".join(r.name for r in ordered)},
    }


def build_pack_image(
    pack: str, members: Sequence[Member], settings: BuildSettings, ref: str
) -> ImageResult:
    """The pack image `ref` in the engine, stacked from the members' model images."""
    if not members:
        raise BuildError(f"pack '{pack}': no models")
    chash = ref.rsplit(":", 1)[1]
    with locked(f"pack-{pack}-{chash}"):
        existing = built_here(ref)
        if existing is not None:
            return ImageResult(ref, str(existing["Id"]), chash, built=False)
        ordered = sorted(members, key=lambda m: m.resolved.name)
        infos = [_member_image(pack, m, settings) for m in ordered]
        shared = infos[0]["RootFS"]["Layers"][:-1]
        for m, info in zip(ordered, infos, strict=True):
            if info["RootFS"]["Layers"][:-1] != shared:
                raise BuildError(
                    f"pack '{pack}': model '{m.resolved.name}' ({m.image}) is not on the "
                    f"base and packages layers of '{ordered[0].resolved.name}'; build every "
                    "model of a pack with the same base image and uv.lock"
                )
        base = _base(settings)
        (BUILD_ROOT.resolve() / "layers").mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{pack}-", dir=BUILD_ROOT.resolve() / "layers"))
        try:
            layers: list[image_layers.Layer | str] = [
                _own_layer(pack, m, info, settings, work / m.resolved.model.k8s_name)
                for m, info in zip(ordered, infos, strict=True)
            ]
            config = pack_config(
                pack, [m.resolved for m in ordered], base["Config"].get("Env") or []
            )
            config["Labels"]["fleet.content-hash"] = chash
            shared_base = {**base, "RootFS": {"type": "layers", "Layers": shared}}
            image_id = image_layers.load_image(ref, shared_base, layers, config)
            _record(ref, image_id)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return ImageResult(ref, image_id, chash, built=True)


def _member_image(pack: str, member: Member, settings: BuildSettings) -> dict[str, Any]:
    info = docker_cli.inspect(member.image)
    if info is not None:
        return info
    try:
        return docker_cli.pull(member.image, settings.login)
    except BuildError as exc:
        raise BuildError(
            f"pack '{pack}': model '{member.resolved.name}': its image {member.image} is not "
            f"in the engine and could not be pulled: {exc}"
        ) from exc


def _own_layer(
    pack: str, member: Member, info: dict[str, Any], settings: BuildSettings, work: Path
) -> image_layers.Layer:
    """The member image's own (last) layer as a tar: kept by this host, or made again
    from the image's files with the same diff id."""
    diff_id = str(info["RootFS"]["Layers"][-1])
    kept = kept_layer_path(diff_id)
    if kept.is_file():
        return image_layers.Layer(kept, diff_id)
    work.mkdir(parents=True)
    root = bento_dir(member.resolved)
    trees = {root.lstrip("/"): _copy_out(member.image, root, work / "tree")}
    files = {}
    if settings.ca_bundle is not None:
        files[CA_PATH] = image_file(member.image, "/" + CA_PATH)
    layer = image_layers.write_layer(work / "layer.tar", trees, files)
    if layer.diff_id != diff_id:
        raise BuildError(
            f"pack '{pack}': model '{member.resolved.name}': the layer made again from "
            f"{member.image} is {layer.diff_id[:19]}, not the image's {diff_id[:19]}; "
            "build the model's image on this runner (remove its tag from the registry)"
        )
    return layer


def _copy_out(image: str, path: str, dest: Path) -> Path:
    """The directory `path` of `image`, copied to `dest` (`docker cp` from a container
    that is created, never started)."""
    made = docker_cli.run("create", "--network", "none", image)
    if made.returncode != 0:
        raise BuildError(f"cannot read {image}: {made.stderr.decode()[-500:]}")
    cid = made.stdout.decode().strip()
    try:
        out = docker_cli.run("cp", f"{cid}:{path}", "-")
        if out.returncode != 0:
            raise BuildError(f"cannot copy {path} out of {image}: {out.stderr.decode()[-500:]}")
        dest.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
            tar.extractall(dest, filter="tar")
    finally:
        docker_cli.run("rm", "--force", cid)
    return dest / Path(path).name
