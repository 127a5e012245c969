"""Content-addressed model images: a bento per model and a container image built from it.

The content hash covers everything that decides what the image holds: the model (URI,
version, run id), the service code, the pinned requirements exported from uv.lock, the
base image and the build settings. The bento's version and the image's tag are that
hash, so a bento or image that exists under it needs no build.

The image is built with the Docker CLI (legacy builder; works on old engines and vfs):
its Python packages are installed on the host from the exported pins with
`uv pip install --target` (from uv's cache, no network inside `docker build`) and copied
in as one layer that every model image shares; the bento is a second, small layer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fleet.hashing import FORMAT, code_manifest, digest, exported_requirements, file_digest
from fleet.registry import LOCAL_HOME, ResolvedModel
from fleet.serving import launch

DEFAULT_BASE_IMAGE = "model-fleet/base:bookworm"
DEFAULT_REGISTRY = "localhost:5000/fleet"
PORT = 3000
UID = 10001
BUILD_ROOT = LOCAL_HOME / "build"


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
class BentoResult:
    """A bento in the BentoML store and whether this call built it."""

    tag: str
    path: Path
    content_hash: str
    built: bool


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
        "dockerfile": dockerfile(resolved, settings, bento_name="-"),
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
        "PYTHONPATH": "/opt/fleet/deps",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
    }


def dockerfile(resolved: ResolvedModel, settings: BuildSettings, bento_name: str) -> str:
    """The model image's Dockerfile: base, shared packages layer, bento layer, non-root."""
    lines = [f"FROM {settings.base_image}", "COPY deps /opt/fleet/deps"]
    if settings.ca_bundle is not None:
        lines += [
            "COPY ca-bundle.crt /opt/fleet/ca-bundle.crt",
            "RUN cat /opt/fleet/ca-bundle.crt >> /etc/ssl/certs/ca-certificates.crt",
        ]
    lines.append("COPY bento /opt/fleet/bento")
    env = image_env(resolved)
    lines += [f"ENV {k}={json.dumps(v)}" for k, v in sorted(env.items())]
    lines += [
        f"LABEL fleet.model={json.dumps(resolved.name)} "
        f'fleet.model-version="{resolved.version}" fleet.bento={json.dumps(bento_name)}',
        f"USER {UID}:{UID}",
        f"EXPOSE {PORT}",
        "CMD "
        + json.dumps(
            [
                "/usr/bin/python3",
                "-m",
                "bentoml",
                "serve",
                "/opt/fleet/bento",
                "--host",
                "0.0.0.0",
                "--port",
                str(PORT),
            ]
        ),
    ]
    return "\n".join(lines) + "\n"


def build_bento(resolved: ResolvedModel, tracking_uri: str, settings: BuildSettings) -> BentoResult:
    """Import the model and build its bento, versioned by content hash; cached by it."""
    chash = content_hash(resolved, settings)
    tag = f"{resolved.model.k8s_name}:{chash}"
    store = launch.bentoml_home() / "bentos" / resolved.model.k8s_name / chash
    if (store / "bento.yaml").is_file():
        return BentoResult(tag, store, chash, built=False)
    model_tag = launch.prepare_model(resolved, tracking_uri)
    # BentoML reads the requirements file only inside the build context, by relative path.
    work = settings.project_root / "build" / "bentofiles"  # build/ is git-ignored
    work.mkdir(parents=True, exist_ok=True)
    requirements = work / f"{chash}.requirements.txt"
    requirements.write_text(exported_requirements(settings.project_root))
    bentofile = work / f"{chash}.bentofile.yaml"
    bentofile.write_text(
        json.dumps(
            {
                "service": launch.SERVICE,
                "name": resolved.model.k8s_name,
                "labels": {
                    "fleet.content-hash": chash,
                    "fleet.model": resolved.model.k8s_name,
                    "fleet.model-version": str(resolved.version),
                },
                "include": list(_includes()),
                "python": {
                    "requirements_txt": str(requirements.relative_to(settings.project_root)),
                    "lock_packages": False,
                },
                "models": [model_tag],
            }
        )
    )
    # A subprocess: the service module reads its model from the environment at import.
    argv = [sys.executable, "-m", "bentoml", "build", str(settings.project_root)]
    argv += ["-f", str(bentofile), "--version", chash, "-o", "tag"]
    env = {**os.environ, **launch.server_config(resolved, model_tag).to_env()}
    env.update(launch.server_env())
    proc = subprocess.run(
        argv, env=env, cwd=settings.project_root, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not (store / "bento.yaml").is_file():
        raise BuildError(f"model '{resolved.name}': bentoml build failed:\n{proc.stderr[-3000:]}")
    return BentoResult(tag, store, chash, built=True)


def _includes() -> tuple[str, ...]:
    from fleet.hashing import SERVICE_GLOBS

    return SERVICE_GLOBS


class BuildError(RuntimeError):
    """A bento or image build failed; the message names the model."""


def build_image(resolved: ResolvedModel, tracking_uri: str, settings: BuildSettings) -> ImageResult:
    """Build the model image (bento first), unless an image with its tag already exists."""
    ref = image_ref(resolved, settings)
    chash = ref.rsplit(":", 1)[1]
    existing = _image_id(ref)
    if existing:
        return ImageResult(ref, existing, chash, built=False)
    bento = build_bento(resolved, tracking_uri, settings)
    deps = _deps_dir(settings)
    ctx = BUILD_ROOT.resolve() / "contexts" / f"{resolved.model.k8s_name}-{chash}"
    shutil.rmtree(ctx, ignore_errors=True)
    try:
        _link_tree(deps, ctx / "deps")
        shutil.copytree(bento.path, ctx / "bento")
        _copy_model(launch.model_tag(resolved), ctx / "bento" / "models")
        if settings.ca_bundle is not None:
            shutil.copyfile(settings.ca_bundle, ctx / "ca-bundle.crt")
        (ctx / "Dockerfile").write_text(dockerfile(resolved, settings, bento.tag))
        argv = [_docker(), "build", "--label", f"fleet.content-hash={chash}", "-t", ref, str(ctx)]
        proc = subprocess.run(
            argv, env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-3000:]
            raise BuildError(f"model '{resolved.name}': docker build of {ref} failed:\n{tail}")
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return ImageResult(ref, _image_id(ref) or "", chash, built=True)


def push_image(ref: str) -> str:
    """Push `ref` to its registry; returns the repository digest (`name@sha256:...`)."""
    proc = subprocess.run([_docker(), "push", ref], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"docker push {ref} failed: {(proc.stderr or proc.stdout)[-2000:]}")
    name = ref.rsplit(":", 1)[0]
    fmt = "{{json .RepoDigests}}"
    out = subprocess.run(
        [_docker(), "image", "inspect", "--format", fmt, ref], capture_output=True, text=True
    )
    digests = [d for d in json.loads(out.stdout or "[]") if d.startswith(name + "@")]
    if not digests:
        raise BuildError(f"docker push {ref}: no repository digest for {name}")
    return str(digests[0])


def _docker() -> str:
    return os.environ.get("DOCKER") or shutil.which("docker") or "/usr/bin/docker"


def _image_id(ref: str) -> str | None:
    proc = subprocess.run(
        [_docker(), "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _deps_dir(settings: BuildSettings) -> Path:
    """The image's site-packages for the exported pins, installed once per pin set."""
    pins = exported_requirements(settings.project_root)
    key = digest({"pins": pins, "platform": settings.python_platform})
    target = BUILD_ROOT.resolve() / "deps" / key
    if target.is_dir():
        return target
    tmp = target.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp.parent / f"{key}.txt").write_text(pins)
    uv = os.environ.get("UV") or shutil.which("uv") or "uv"
    argv = [uv, "pip", "install", "--no-deps", "--target", str(tmp), "--python-version", "3.11"]
    argv += ["--python-platform", settings.python_platform, "-r", str(tmp.parent / f"{key}.txt")]
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        raise BuildError(f"installing the image's packages failed: {proc.stderr[-3000:]}")
    tmp.rename(target)
    return target


def _copy_model(tag: str, models_dir: Path) -> None:
    """The imported model into the bento's own model store (`bentoml serve <bento>` reads it)."""
    name, version = tag.split(":")
    src = launch.bentoml_home() / "models" / name / version
    shutil.copytree(src, models_dir / name / version)
    (models_dir / name / "latest").write_text(version)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a tree as hard links (no bytes copied); falls back to copying across devices."""
    try:
        shutil.copytree(src, dst, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
