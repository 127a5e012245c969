"""Content-addressed images: the model images (a bento each) and the router image.

A model image's content hash covers everything that decides what it holds: the model
(URI, version, run id, server settings), its code (`fleet.hashing.MODEL_IMAGE_CODE`),
the pins exported from uv.lock, the base image and the build settings. The bento's
version and the image's tag are that hash, so a bento or image that exists under it
needs no build. The router image is hashed the same way over its own code.

Images are assembled from layers and loaded with `docker load` (`image_layers` says
why not `docker build`): the base image's layers; one layer of Python packages installed
on the host from the exported pins, shared by every model image and the router; and one
small layer with the bento (a model) or the router's code. The base image's Python
(/usr/bin/python3) runs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import BuildError
from fleet.hashing import (
    FORMAT,
    MODEL_IMAGE_CODE,
    ROUTER_IMAGE_CODE,
    code_manifest,
    digest,
    file_digest,
    image_files,
)
from fleet.host import docker_cli, image_layers, requirements
from fleet.host.environment import LOCAL_HOME, child_env
from fleet.host.locks import locked
from fleet.host.model_server import SERVICE, server_args, server_config, server_env
from fleet.host.model_store import ModelStore, model_tag
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel
from fleet.serving.config import ENV_MODEL_DIR, MLFLOW_FOLDER, PYTHON_FLAGS, THREAD_ENV

DEFAULT_BASE_IMAGE = "model-fleet/base:bookworm"
DEFAULT_REGISTRY = "localhost:5000/fleet"
PORT = 3000
UID = 10001
DEPS_DIR = "/opt/fleet/deps"
MODELS_DIR = "/opt/fleet/models"
"""Each model image's own layer holds its bento at `MODELS_DIR/<k8s-name>`: layers of
different models never overlap, so a pack image stacks them (`build_pack_image`)."""
APP_DIR = "/opt/fleet/app"
ROUTER_REPO = "fleet-router"
BUILD_ROOT = LOCAL_HOME / "build"
DEPS_IMAGE = "model-fleet/deps"
CA_PATH = "etc/ssl/certs/ca-certificates.crt"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class BuildSettings:
    """What decides an image besides the model itself, and where builds keep their files."""

    registry: str = DEFAULT_REGISTRY
    """Image name prefix (`localhost:5000/fleet`); images are `<registry>/<k8s-name>:<hash>`."""
    base_image: str = DEFAULT_BASE_IMAGE
    """Image to build FROM; needs /usr/bin/python3 (3.11). Hashed by name."""
    ca_bundle: Path | None = None
    """Extra CA bundle (PEM) appended to the image's trust store, for TLS-inspecting networks."""
    python_platform: str = "x86_64-manylinux_2_36"
    """Platform the image's wheels are installed for (bookworm's glibc is 2.36)."""
    project_root: Path = field(default=PROJECT_ROOT, compare=False)
    """Where uv.lock and the `fleet` sources are read from (a copy in tests)."""
    store: ModelStore = field(default_factory=ModelStore.from_environment, compare=False)
    """The BentoML store models are imported into and bentos are built in."""
    login: docker_cli.RegistryLogin | None = field(default=None, compare=False, repr=False)
    """Credentials to pull the base image with when the engine does not have it."""


@dataclass(frozen=True)
class BentoResult:
    """A bento in the BentoML store and whether this call built it."""

    tag: str
    path: Path
    content_hash: str
    built: bool


@dataclass(frozen=True)
class ImageResult:
    """An image in the engine and whether this call built it."""

    image_ref: str
    image_id: str
    content_hash: str
    built: bool = False


def content_hash(resolved: ResolvedModel, settings: BuildSettings) -> str:
    """Hex hash over model URI, version, run id, server settings, image code, pinned
    requirements, base image and build settings. Reads files, no network, no build."""
    root = settings.project_root
    manifest = {
        "format": FORMAT,
        "model": [resolved.name, resolved.model_uri, resolved.version, resolved.run_id],
        "server": server_config(resolved).to_env(),
        "code": code_manifest(root, MODEL_IMAGE_CODE),
        "requirements": digest({"pins": requirements.exported_requirements(root)}),
        "base_image": settings.base_image,
        "ca_bundle": file_digest(settings.ca_bundle) if settings.ca_bundle else None,
        "python_platform": settings.python_platform,
        "image_config": image_config(resolved, []),
    }
    return digest(manifest)


def image_ref(resolved: ResolvedModel, settings: BuildSettings) -> str:
    """`<registry>/<k8s-name>:<content-hash>`."""
    return f"{settings.registry}/{resolved.model.k8s_name}:{content_hash(resolved, settings)}"


def bento_dir(resolved: ResolvedModel) -> str:
    """Where the model image's layer puts the model's bento."""
    return f"{MODELS_DIR}/{resolved.model.k8s_name}"


def model_env(resolved: ResolvedModel) -> dict[str, str]:
    """What the server needs to serve `resolved` from its bento in the image: its
    settings and signature, and its model's folder (one entry of a pack's `FLEET_PACK`)."""
    config = server_config(resolved)
    name, version = config.model_tag.split(":")
    model_dir = f"{bento_dir(resolved)}/models/{name}/{version}/{MLFLOW_FOLDER}"
    return {**config.to_env(), ENV_MODEL_DIR: model_dir}


def runtime_env(code_from: ResolvedModel) -> dict[str, str]:
    """The environment of every model-server image besides its models': the packages
    layer and the `fleet` code of `code_from`'s bento on the path."""
    return {
        **THREAD_ENV,
        "BENTOML_HOME": "/tmp/bentoml",
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_LOGGED_MODEL_ENV_VALIDATION": "false",
        "PYTHONPATH": f"{DEPS_DIR}:{bento_dir(code_from)}/src",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
    }


def image_env(resolved: ResolvedModel) -> dict[str, str]:
    """The environment baked into the model image: which model, its signature, batching,
    and where the model is in the bento."""
    return {**model_env(resolved), **runtime_env(resolved)}


def image_config(resolved: ResolvedModel, base_env: list[str]) -> dict[str, Any]:
    """The image config: env (the base's, then ours), non-root user, port, command, labels."""
    env = dict(e.split("=", 1) for e in base_env)
    env.update(image_env(resolved))
    argv = ["/usr/bin/python3", *PYTHON_FLAGS, "-m", "fleet.serving"]
    return {
        "Env": [f"{k}={v}" for k, v in env.items()],
        "User": f"{UID}:{UID}",
        "ExposedPorts": {f"{PORT}/tcp": {}},
        "Cmd": [*argv, *server_args("0.0.0.0", PORT)],
        "WorkingDir": "/tmp",
        "Labels": {
            "fleet.model": resolved.name,
            "fleet.model-version": str(resolved.version),
            "fleet.model-uri": resolved.model_uri,
        },
    }


def build_bento(
    resolved: ResolvedModel, registry: Registry, settings: BuildSettings
) -> BentoResult:
    """Import the model and build its bento `<k8s-name>:<hash>`; cached by the hash."""
    chash = content_hash(resolved, settings)
    name = resolved.model.k8s_name
    path = settings.store.bento_dir(name, chash)
    if (path / "bento.yaml").is_file():
        return BentoResult(f"{name}:{chash}", path, chash, built=False)
    with locked(f"bento-{name}-{chash}"):
        if (path / "bento.yaml").is_file():  # built by another process meanwhile
            return BentoResult(f"{name}:{chash}", path, chash, built=False)
        _bentoml_build(resolved, registry, settings, chash, path)
    return BentoResult(f"{name}:{chash}", path, chash, built=True)


def _bentoml_build(
    resolved: ResolvedModel, registry: Registry, settings: BuildSettings, chash: str, path: Path
) -> None:
    root = settings.project_root
    tag = settings.store.import_model(resolved, registry)
    # BentoML reads the requirements file only inside the build context, by relative path.
    work = root / "build" / "bentofiles"  # build/ is git-ignored
    work.mkdir(parents=True, exist_ok=True)
    pins = work / f"{chash}.requirements.txt"
    pins.write_text(requirements.exported_requirements(root))
    bentofile = work / f"{chash}.bentofile.yaml"
    bentofile.write_text(
        json.dumps(
            {
                "service": SERVICE,
                "name": resolved.model.k8s_name,
                "labels": {
                    "fleet.content-hash": chash,
                    "fleet.model": resolved.model.k8s_name,
                    "fleet.model-version": str(resolved.version),
                },
                "include": list(MODEL_IMAGE_CODE),
                "python": {
                    "requirements_txt": str(pins.relative_to(root)),
                    "lock_packages": False,
                },
                "models": [tag],
            }
        )
    )
    # A child process: the service module reads its model from the environment at import.
    argv = [sys.executable, "-m", "bentoml", "build", str(root)]
    argv += ["-f", str(bentofile), "--version", chash, "-o", "tag"]
    env = child_env({**server_config(resolved, tag).to_env(), **server_env(settings.store)})
    proc = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (path / "bento.yaml").is_file():
        raise BuildError(f"model '{resolved.name}': bentoml build failed:\n{proc.stderr[-3000:]}")


def build_image(
    resolved: ResolvedModel, registry: Registry, settings: BuildSettings
) -> ImageResult:
    """Build the model image (bento first), unless an image with its tag already exists."""
    ref = image_ref(resolved, settings)
    chash = ref.rsplit(":", 1)[1]
    with locked(f"image-{resolved.model.k8s_name}-{chash}"):
        existing = built_here(ref)
        if existing is not None:
            return ImageResult(ref, existing["Id"], chash, built=False)
        image_id = _build_model_image(resolved, registry, settings, ref, chash)
        _record(ref, image_id)
    return ImageResult(ref, image_id, chash, built=True)


def built_here(ref: str) -> dict[str, Any] | None:
    """The engine's image `ref` (`docker image inspect`) when this host built it, None
    when the engine has no such image.

    Tags are content hashes anyone can compute, and the engine may be shared: another job
    on it (a merge request's) can `docker tag` an image of its own under a tag a deploy is
    about to build. So an image is reused, and pushed, only when its ID is the one
    recorded when it was built here (`_record`); otherwise BuildError names the tag.
    """
    existing = docker_cli.inspect(ref)
    if existing is None:
        return None
    recorded = _recorded(ref)
    if recorded != existing["Id"]:
        held = str(existing["Id"])[:19]
        ours = f"the one built here is {recorded[:19]}" if recorded else "none was built here"
        raise BuildError(
            f"image {ref}: the engine holds an image under this tag that was not built "
            f"here ({held}; {ours}). Another job using this Docker engine may have tagged "
            f"it: remove it (`docker rmi {ref}`) and run again, and run deploys on an "
            "engine that merge-request jobs do not use"
        )
    return existing


def _record_path(ref: str) -> Path:
    return BUILD_ROOT.resolve() / "built" / hashlib.sha256(ref.encode()).hexdigest()


def _record(ref: str, image_id: str) -> None:
    """Note that this host built `ref` as `image_id` (`built_here` checks it)."""
    path = _record_path(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(f"{ref}\n{image_id}\n")
    tmp.replace(path)


def _recorded(ref: str) -> str:
    """The image ID this host built `ref` as, or '' when it built none."""
    try:
        name, image_id = _record_path(ref).read_text().split()
    except (OSError, ValueError):
        return ""
    return image_id if name == ref else ""


def _build_model_image(
    resolved: ResolvedModel, registry: Registry, settings: BuildSettings, ref: str, chash: str
) -> str:
    base = _base(settings)
    bento = build_bento(resolved, registry, settings)
    deps = packages_layer_id(settings, base)
    (BUILD_ROOT.resolve() / "layers").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{chash}-", dir=BUILD_ROOT.resolve() / "layers"))
    try:
        layer = bento_layer(resolved, bento, settings, work)
        config = image_config(resolved, base["Config"].get("Env") or [])
        config["Labels"].update({"fleet.content-hash": chash, "fleet.bento": bento.tag})
        image_id = image_layers.load_image(ref, base, [deps, layer], config)
    except BuildError as exc:
        raise BuildError(f"model '{resolved.name}': {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image_id


def bento_layer(
    resolved: ResolvedModel, bento: BentoResult, settings: BuildSettings, work: Path
) -> image_layers.Layer:
    """The model image's own layer in `work`: the bento with its model (and the CA bundle).

    The same model and code give the same layer whichever store or runner built the bento.
    """
    shutil.copytree(bento.path, work / "bento")
    _copy_model(settings.store, model_tag(resolved), work / "bento" / "models")
    _without_creation_times(work / "bento")
    files = {}
    if settings.ca_bundle is not None:
        files[CA_PATH] = image_file(settings.base_image, "/" + CA_PATH) + (
            b"\n" + settings.ca_bundle.read_bytes()
        )
    layer = image_layers.write_layer(
        work / "layer.tar", {bento_dir(resolved).lstrip("/"): work / "bento"}, files
    )
    keep_layer(layer)
    return layer


def _copy_model(store: ModelStore, tag: str, models_dir: Path) -> None:
    """The imported model into the bento's own model store (`bentoml serve <bento>` reads it)."""
    name, version = tag.split(":")
    shutil.copytree(store.model_dir(tag), models_dir / name / version)
    (models_dir / name / "latest").write_text(version)


def kept_layer_path(diff_id: str) -> Path:
    """Where this host keeps the tar of a model image's own layer (`keep_layer`)."""
    return BUILD_ROOT.resolve() / "layers" / "kept" / f"{diff_id.split(':')[1]}.tar"


def keep_layer(layer: image_layers.Layer) -> None:
    """Keep a model layer's tar, by diff id: a pack image made on this host stacks it
    without reading it back out of the engine (`fleet.host.pack_images`)."""
    dest = kept_layer_path(layer.diff_id)
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(f".{os.getpid()}.tmp")
    shutil.copyfile(layer.path, tmp)
    tmp.replace(dest)


_CREATION_TIME = re.compile(r"^(\s*creation_time: ).*$", re.MULTILINE)


def _without_creation_times(bento: Path) -> None:
    """BentoML stamps the bento and each model with the time it made them: fix those
    stamps, so the same model and code give the same layer on any runner."""
    for meta in [bento / "bento.yaml", *bento.glob("models/*/*/model.yaml")]:
        meta.write_text(_CREATION_TIME.sub(r"\g<1>'1970-01-01T00:00:00+00:00'", meta.read_text()))


def _base(settings: BuildSettings) -> dict[str, Any]:
    """The base image from the engine, pulled first when the engine does not have it (a
    fresh runner; the stack names it by digest in its registry, `scripts/base-image.sh`)."""
    base = docker_cli.inspect(settings.base_image)
    if base is not None:
        return base
    try:
        return docker_cli.pull(settings.base_image, settings.login)
    except BuildError as exc:
        raise BuildError(
            f"base image {settings.base_image} is not in the engine and could not be pulled "
            f"(make and push it with scripts/base-image.sh): {exc}"
        ) from exc


def packages_layer_id(settings: BuildSettings, base: dict[str, Any]) -> str:
    """Diff id of the packages layer for the exported pins, loaded into the engine once.

    The engine keeps it as the image `DEPS_IMAGE:<key>`; while that image exists nothing is
    installed again (a fresh checkout on the same engine, such as CI's, reuses it), and the
    files made on the way are removed once the engine has the layer.
    """
    pins = requirements.exported_requirements(settings.project_root)
    key = digest(
        {"format": FORMAT, "pins": pins, "platform": settings.python_platform, "base": base["Id"]}
    )
    ref = f"{DEPS_IMAGE}:{key}"
    with locked(f"deps-{key}"):
        loaded = built_here(ref)
        if loaded is not None:
            return str(loaded["RootFS"]["Layers"][-1])
        root = BUILD_ROOT.resolve() / "deps" / key
        try:
            requirements.install(pins, root, settings.python_platform, DEPS_DIR)
            layer = image_layers.write_layer(
                root.with_suffix(".layer.tar"), {DEPS_DIR.lstrip("/"): root}
            )
            loaded_id = image_layers.load_image(
                ref, base, [layer], {"Env": base["Config"].get("Env") or []}
            )
            _record(ref, loaded_id)
        finally:
            shutil.rmtree(root, ignore_errors=True)
            root.with_suffix(".layer.tar").unlink(missing_ok=True)
    return layer.diff_id


def image_file(image: str, path: str) -> bytes:
    """A file of `image` (the base's CA bundle, to extend it)."""
    proc = docker_cli.run("run", "--rm", "--network", "none", "--entrypoint", "cat", image, path)
    if proc.returncode != 0:
        raise BuildError(f"cannot read {path} from {image}: {proc.stderr.decode()[-500:]}")
    return proc.stdout


def router_hash(settings: BuildSettings) -> str:
    """Hash over the router image's code, the pinned requirements, base image and platform."""
    root = settings.project_root
    return digest(
        {
            "kind": "router",
            "format": FORMAT,
            "code": code_manifest(root, ROUTER_IMAGE_CODE),
            "requirements": digest({"pins": requirements.exported_requirements(root)}),
            "base_image": settings.base_image,
            "python_platform": settings.python_platform,
            "uid": UID,
        }
    )


def router_ref(settings: BuildSettings) -> str:
    """`<registry>/fleet-router:<hash>`."""
    return f"{settings.registry}/{ROUTER_REPO}:{router_hash(settings)}"


def router_config(base_env: list[str]) -> dict[str, Any]:
    """Image config: the base's env plus ours, non-root, `python3 -m fleet.router`."""
    env = dict(e.split("=", 1) for e in base_env)
    env.update(PYTHONPATH=f"{DEPS_DIR}:{APP_DIR}", PYTHONDONTWRITEBYTECODE="1", HOME="/tmp")
    return {
        "Env": [f"{k}={v}" for k, v in env.items()],
        "User": f"{UID}:{UID}",
        "Entrypoint": ["/usr/bin/python3", "-m", "fleet.router"],
        "WorkingDir": "/tmp",
        "Labels": {"fleet.component": "router"},
    }


def build_router_image(ref: str, settings: BuildSettings) -> ImageResult:
    """The router image `ref`; no work when the tag exists."""
    chash = ref.rsplit(":", 1)[1]
    with locked(f"router-{chash}"):
        existing = built_here(ref)
        if existing is not None:
            return ImageResult(ref, str(existing["Id"]), chash, built=False)
        base = _base(settings)
        deps = packages_layer_id(settings, base)  # the packages layer the model images share
        BUILD_ROOT.resolve().mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="router-", dir=BUILD_ROOT.resolve()))
        try:
            app = work / "app"
            for rel in image_files(settings.project_root, ROUTER_IMAGE_CODE):
                (app / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(settings.project_root / rel, app / rel)
            # No extra CA bundle: the router only calls in-cluster model Services over HTTP.
            layer = image_layers.write_layer(work / "app.tar", {APP_DIR.lstrip("/"): app})
            config = router_config(base["Config"].get("Env") or [])
            # The packages layer is in the engine already (loaded once as DEPS_IMAGE):
            # reference it by diff id instead of sending a GB again.
            image_id = image_layers.load_image(ref, base, [deps, layer], config)
            _record(ref, image_id)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return ImageResult(ref, image_id, chash, built=True)
