"""The router image as a Pulumi dynamic resource, built like the model images.

Base image + the shared packages layer from uv.lock (the very layer every model image
carries, `fleet.build`) + one small layer with the `fleet` sources. Its content hash
(sources, pins, base image, build settings) is computed at program time; the provider
builds and pushes only in create/update, and only when that hash changed.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components.image import deployable_ref, settings_from_dict, settings_to_dict
from fleet import image
from fleet.build import BUILD_ROOT, DEPS_DIR, UID, BuildSettings, packages_layer_id, push_image
from fleet.hashing import digest, exported_requirements, file_digest

APP_DIR = "/opt/fleet/app"
ROUTER_REPO = "fleet-router"
KEYS = ("content_hash", "image_ref", "push")


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in (root / "fleet").rglob("*.py") if "__pycache__" not in p.parts)


def router_hash(settings: BuildSettings) -> str:
    """Hash over the `fleet` sources, the pinned requirements, base image and platform."""
    root = settings.project_root
    return digest(
        {
            "kind": "router",
            "code": {str(p.relative_to(root)): file_digest(p) for p in _sources(root)},
            "requirements": digest({"pins": exported_requirements(root)}),
            "base_image": settings.base_image,
            "python_platform": settings.python_platform,
            "uid": UID,
        }
    )


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


def build_router_image(ref: str, settings: BuildSettings) -> tuple[str, bool]:
    """(image id, built) of the router image `ref`; no work when the tag exists."""
    existing = image.inspect(ref)
    if existing is not None:
        return str(existing["Id"]), False
    base = image.inspect(settings.base_image)
    if base is None:
        raise RuntimeError(f"router image: base image {settings.base_image} is not in the engine")
    deps = packages_layer_id(settings, base)  # the packages layer the model images share
    BUILD_ROOT.resolve().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="router-", dir=BUILD_ROOT.resolve()))
    try:
        src = settings.project_root / "fleet"
        shutil.copytree(src, work / "fleet", ignore=shutil.ignore_patterns("__pycache__"))
        # No extra CA bundle: the router only calls in-cluster model Services over HTTP.
        app = image.write_layer(work / "app.tar", {f"{APP_DIR.lstrip('/')}/fleet": work / "fleet"})
        config = router_config(base["Config"].get("Env") or [])
        # The packages layer is in the engine already (fleet.build loads it once as
        # DEPS_IMAGE): reference it by diff id instead of sending a GB again.
        image_id = image.load_image(ref, base, [deps, app], config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image_id, True


@dataclass(frozen=True)
class RouterImageArgs:
    """What the router image is built from."""

    build: BuildSettings
    """Registry prefix, base image, CA bundle (the model images' settings)."""
    push: bool = True
    """Push to the registry and deploy by digest."""


def router_image_inputs(args: RouterImageArgs) -> dict[str, Any]:
    chash = router_hash(args.build)
    return {
        "content_hash": chash,
        "image_ref": f"{args.build.registry}/{ROUTER_REPO}:{chash}",
        "build": settings_to_dict(args.build),
        "push": args.push,
    }


def build_and_push_router(props: dict[str, Any]) -> dict[str, Any]:
    settings = settings_from_dict(props["build"])
    image_id, built = build_router_image(props["image_ref"], settings)
    pushed = push_image(props["image_ref"]) if props.get("push") else ""
    outs = {k: v for k, v in props.items() if not k.startswith("__")}
    image_ref = props["image_ref"]
    ref = deployable_ref(image_ref, pushed)
    outs.update(image_id=image_id, digest=pushed, built=built, image=ref)
    return outs


class RouterImageProvider(ResourceProvider):
    """Builds and pushes the router image in create/update only; diff compares hashes."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["image_ref"], outs=build_and_push_router(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in KEYS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=build_and_push_router(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class RouterImage(pulumi.dynamic.Resource, module="fleet", name="RouterImage"):
    """The router's container image, pushed to the stack's registry."""

    image: pulumi.Output[str]
    """Reference to deploy: `repo@sha256:...` after a push, else `repo:hash`."""

    def __init__(
        self, name: str, args: RouterImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props = router_image_inputs(args)
        planned: str = props["content_hash"]
        props.update(image=None, digest=None, image_id=None, built=None)
        super().__init__(RouterImageProvider(), name, props, opts)
        self.planned_hash = planned
        """The content hash computed at program time (a plain string)."""
