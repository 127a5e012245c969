"""The router image as a Pulumi dynamic resource, built like the model images.

Base image + the shared packages layer from uv.lock (the very layer every model image
carries) + one small layer with the router's code (`fleet.hashing.ROUTER_IMAGE_CODE`);
the host layer builds it (`fleet.host.images.build_router_image`). Its content hash
(code, pins, base image, build settings) is computed at program time; the provider
builds and pushes only in create/update, and only when that hash changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components.config import RegistryAuth
from components.image import deployable_ref, login_of, settings_from_dict, settings_to_dict
from components.wire import outputs_of, plain
from fleet.host import docker_cli
from fleet.host.images import BuildSettings, build_router_image, router_hash, router_ref

KEYS = ("content_hash", "image_ref", "push")


@dataclass(frozen=True)
class RouterImageArgs:
    """What the router image is built from."""

    build: BuildSettings
    """Registry prefix, base image, CA bundle (the model images' settings)."""
    push: bool = True
    """Push to the registry and deploy by digest."""
    auth: RegistryAuth | None = None
    """Registry credentials for the push (the model images' ones)."""


def router_image_inputs(args: RouterImageArgs) -> dict[str, Any]:
    return {
        "content_hash": router_hash(args.build),
        "image_ref": router_ref(args.build),
        "build": settings_to_dict(args.build),
        "push": args.push,
        "registry_server": args.auth.server if args.auth else None,
        "registry_username": args.auth.username if args.auth else None,
        "registry_password": args.auth.password if args.auth else None,
    }


def build_and_push_router(props: dict[str, Any]) -> dict[str, Any]:
    props = plain(props)
    login = login_of(props)
    settings = settings_from_dict(props["build"], login)
    result = build_router_image(props["image_ref"], settings)
    pushed = docker_cli.push(result.image_ref, login, result.image_id) if props.get("push") else ""
    outs = outputs_of(props)
    ref = deployable_ref(result.image_ref, pushed)
    outs.update(image_id=result.image_id, digest=pushed, built=result.built, image=ref)
    return outs


class RouterImageProvider(ResourceProvider):
    """Builds and pushes the router image in create/update only; diff compares hashes."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["image_ref"], outs=build_and_push_router(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = plain(olds), plain(news)
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
