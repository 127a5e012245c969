"""Content-addressed model images: a bento per model and a container image built from it.

The content hash covers everything that decides what the image holds: the model (URI,
version, run id), the service code, the pinned requirements exported from uv.lock, the
base image and the build settings. The bento's version and the image's tag are that
hash, so a bento or image that exists under it needs no build.

The image is assembled from layers and loaded with `docker load` (`fleet.image` says
why not `docker build`): its Python packages are installed on the host from the
exported pins with `uv pip install --target` (from uv's cache; nothing is downloaded
inside the image) into one layer that every model image shares; the bento with its
model is a second, small layer. The base image's Python (/usr/bin/python3) runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import image
from fleet.bento import BentoResult, BuildError, copy_model, locked, make_bento
from fleet.hashing import FORMAT, code_manifest, digest, exported_requirements, file_digest
from fleet.registry import LOCAL_HOME, ResolvedModel
from fleet.serving import launch

__all__ = [
    "BentoResult",
    "BuildError",
    "BuildSettings",
    "ImageResult",
    "build_bento",
    "build_image",
    "content_hash",
    "image_config",
    "image_env",
    "image_ref",
    "packages_layer_id",
    "push_image",
]

DEFAULT_BASE_IMAGE = "model-fleet/base:bookworm"
DEFAULT_REGISTRY = "localhost:5000/fleet"
PORT = 3000
UID = 10001
DEPS_DIR = "/opt/fleet/deps"
BENTO_DIR = "/opt/fleet/bento"
BUILD_ROOT = LOCAL_HOME / "build"
DEPS_IMAGE = "model-fleet/deps"
CA_PATH = "etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class BuildSettings:
    """What decides a model image besides the model itself."""

    registry: str = DEFAULT_REGISTRY
    """Image name prefix (`localhost:5000/fleet`); images are `<registry>/<k8s-name>:<hash>`."""
    base_image: str = DEFAULT_BASE_IMAGE
    """Image to build FROM; needs /usr/bin/python3 (3.11). Hashed by name."""
    ca_bundle: Path | None = None
    """Extra CA bundle (PEM) appended to the image's trust store, for TLS-inspecting networks."""
    python_platform: str = "x86_64-manylinux_2_36"
    """Platform the image's wheels are installed for (bookworm's glibc is 2.36)."""
    project_root: Path = field(default=Path(__file__).resolve().parent.parent, compare=False)
    """Where uv.lock and the `fleet` sources are read from (a copy in tests)."""


@dataclass(frozen=True)
class ImageResult:
    """A model image and whether this call built it."""

    image_ref: str
    image_id: str
    content_hash: str
    built: bool = False


def content_hash(resolved: ResolvedModel, settings: BuildSettings) -> str:
    """Hex hash over model URI, version, run id, service code, pinned requirements, base
    image and build settings. Pure and cheap: reads files, no network, no build."""
    root = settings.project_root
    manifest = {
        "format": FORMAT,
        "model": [resolved.name, resolved.model_uri, resolved.version, resolved.run_id],
        "server": launch.server_config(resolved, launch.model_tag(resolved)).to_env(),
        "code": code_manifest(root),
        "requirements": digest({"pins": exported_requirements(root)}),
        "base_image": settings.base_image,
        "ca_bundle": file_digest(settings.ca_bundle) if settings.ca_bundle else None,
        "python_platform": settings.python_platform,
        "image_config": image_config(resolved, []),
    }
    return digest(manifest)


def image_ref(resolved: ResolvedModel, settings: BuildSettings) -> str:
    """`<registry>/<k8s-name>:<content-hash>`."""
    return f"{settings.registry}/{resolved.model.k8s_name}:{content_hash(resolved, settings)}"


def image_env(resolved: ResolvedModel) -> dict[str, str]:
    """The environment baked into the model image: which model, its signature, batching."""
    config = launch.server_config(resolved, launch.model_tag(resolved))
    return {
        **config.to_env(),
        "BENTOML_HOME": "/tmp/bentoml",
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_LOGGED_MODEL_ENV_VALIDATION": "false",
        "PYTHONPATH": DEPS_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
    }


def image_config(resolved: ResolvedModel, base_env: list[str]) -> dict[str, Any]:
    """The image config: env (the base's, then ours), non-root user, port, command, labels."""
    env = dict(e.split("=", 1) for e in base_env)
    env.update(image_env(resolved))
    argv = ["/usr/bin/python3", "-m", "bentoml", "serve", BENTO_DIR]
    return {
        "Env": [f"{k}={v}" for k, v in env.items()],
        "User": f"{UID}:{UID}",
        "ExposedPorts": {f"{PORT}/tcp": {}},
        "Cmd": [*argv, "--host", "0.0.0.0", "--port", str(PORT)],
        "WorkingDir": "/tmp",
        "Labels": {
            "fleet.model": resolved.name,
            "fleet.model-version": str(resolved.version),
            "fleet.model-uri": resolved.model_uri,
        },
    }


def build_bento(resolved: ResolvedModel, tracking_uri: str, settings: BuildSettings) -> BentoResult:
    """Import the model and build its bento, versioned by content hash; cached by it."""
    chash = content_hash(resolved, settings)
    return make_bento(resolved, tracking_uri, settings.project_root, chash)


def build_image(resolved: ResolvedModel, tracking_uri: str, settings: BuildSettings) -> ImageResult:
    """Build the model image (bento first), unless an image with its tag already exists."""
    ref = image_ref(resolved, settings)
    chash = ref.rsplit(":", 1)[1]
    existing = image.inspect(ref)
    if existing is not None:
        return ImageResult(ref, existing["Id"], chash, built=False)
    with locked(f"image-{resolved.model.k8s_name}-{chash}"):
        existing = image.inspect(ref)  # built by another process meanwhile
        if existing is not None:
            return ImageResult(ref, existing["Id"], chash, built=False)
        image_id = _build_image(resolved, tracking_uri, settings, ref, chash)
    return ImageResult(ref, image_id, chash, built=True)


def _build_image(
    resolved: ResolvedModel, tracking_uri: str, settings: BuildSettings, ref: str, chash: str
) -> str:
    base = image.inspect(settings.base_image)
    if base is None:
        raise BuildError(f"base image {settings.base_image} is not in the engine (pull or make it)")
    bento = build_bento(resolved, tracking_uri, settings)
    deps = packages_layer_id(settings, base)
    (BUILD_ROOT.resolve() / "layers").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{chash}-", dir=BUILD_ROOT.resolve() / "layers"))
    try:
        shutil.copytree(bento.path, work / "bento")
        copy_model(launch.model_tag(resolved), work / "bento" / "models")
        files = {}
        if settings.ca_bundle is not None:
            files[CA_PATH] = _base_file(settings.base_image, "/" + CA_PATH) + (
                b"\n" + settings.ca_bundle.read_bytes()
            )
        layer = image.write_layer(
            work / "layer.tar", {BENTO_DIR.lstrip("/"): work / "bento"}, files
        )
        config = image_config(resolved, base["Config"].get("Env") or [])
        config["Labels"].update({"fleet.content-hash": chash, "fleet.bento": bento.tag})
        image_id = image.load_image(ref, base, [deps, layer], config)
    except image.ImageError as exc:
        raise BuildError(f"model '{resolved.name}': {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image_id


def push_image(ref: str) -> str:
    """Push `ref` to its registry; returns the repository digest (`name@sha256:...`)."""
    return image.push(ref)


def packages_layer_id(settings: BuildSettings, base: dict[str, Any]) -> str:
    """Diff id of the packages layer for the exported pins, loaded into the engine once.

    The engine keeps it as the image `DEPS_IMAGE:<key>`; while that image exists nothing is
    installed again (a fresh checkout on the same engine, such as CI's, reuses it), and the
    files made on the way are removed once the engine has the layer.
    """
    pins = exported_requirements(settings.project_root)
    key = digest({"pins": pins, "platform": settings.python_platform, "base": base["Id"]})
    ref = f"{DEPS_IMAGE}:{key}"
    with locked(f"deps-{key}"):
        loaded = image.inspect(ref)
        if loaded is not None:
            return str(loaded["RootFS"]["Layers"][-1])
        root = BUILD_ROOT.resolve() / "deps" / key
        try:
            _install_deps(pins, root, settings.python_platform)
            layer = image.write_layer(root.with_suffix(".layer.tar"), {DEPS_DIR.lstrip("/"): root})
            image.load_image(ref, base, [layer], {"Env": base["Config"].get("Env") or []})
        finally:
            shutil.rmtree(root, ignore_errors=True)
            root.with_suffix(".layer.tar").unlink(missing_ok=True)
    return layer.diff_id


def _install_deps(pins: str, target: Path, platform: str) -> None:
    """`uv pip install --target` of exactly the pins (from uv's cache where it can)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    requirements = tmp.with_suffix(".txt")
    requirements.write_text(pins)
    uv = os.environ.get("UV") or shutil.which("uv") or "uv"
    argv = [uv, "pip", "install", "--no-deps", "--compile-bytecode", "--target", str(tmp)]
    argv += ["--python-version", "3.11", "--python-platform", platform, "-r", str(requirements)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (tmp / "bentoml").is_dir():
        raise BuildError(f"installing the image's packages failed: {proc.stderr[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _base_file(base_image: str, path: str) -> bytes:
    """A file of the base image (its CA bundle, to extend it)."""
    argv = [image.docker(), "run", "--rm", "--network", "none", "--entrypoint", "cat"]
    proc = subprocess.run([*argv, base_image, path], capture_output=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"cannot read {path} from {base_image}: {proc.stderr.decode()[-500:]}")
    return proc.stdout
