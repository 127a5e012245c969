"""A pack's image as a Pulumi dynamic resource: stacked from its models' images.

Its hash (`fleet.host.pack_images.pack_hash`) is over the pack's name and each member's
content hash, computed at program time; diff compares it, so a preview and an unchanged
`up` do no work. `create`/`update` stack the member images (which the engine waits for:
their references are inputs) and push the result; nothing is built again
(`fleet.host.pack_images`).
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
from fleet.host.images import BuildSettings
from fleet.host.pack_images import Member, build_pack_image, pack_hash, pack_ref
from fleet.resolved import ResolvedModel

IMAGE_KEYS = ("content_hash", "image_ref", "push")


@dataclass(frozen=True)
class PackMemberArgs:
    """One model of a pack: the model and its image (an output of its ModelImage)."""

    resolved: ResolvedModel
    image: pulumi.Input[str]
    content_hash: str
    """The member image's content hash, known at program time."""


@dataclass(frozen=True)
class PackImageArgs:
    """What a pack image is stacked from."""

    pack: str
    """The pack's name (`pack-0`): its image repository and its Kubernetes name."""
    members: list[PackMemberArgs]
    build: BuildSettings
    push: bool = True
    auth: RegistryAuth | None = None


def pack_image_inputs(args: PackImageArgs) -> dict[str, Any]:
    members = sorted(args.members, key=lambda m: m.resolved.name)
    chash = pack_hash(args.pack, [(m.resolved.name, m.content_hash) for m in members])
    return {
        "pack": args.pack,
        "members": [
            {"model": m.resolved.to_dict(), "image": m.image, "content_hash": m.content_hash}
            for m in members
        ],
        "content_hash": chash,
        "image_ref": pack_ref(args.build.registry, args.pack, chash),
        "build": settings_to_dict(args.build),
        "push": args.push,
        "registry_server": args.auth.server if args.auth else None,
        "registry_username": args.auth.username if args.auth else None,
        "registry_password": args.auth.password if args.auth else None,
    }


def stack_and_push(props: dict[str, Any]) -> dict[str, Any]:
    """Stack the pack image (or find it in the registry) and push it; the outputs."""
    props = plain(props)
    login = login_of(props)
    outs = outputs_of(props)
    pushed = docker_cli.remote_digest(props["image_ref"], login) if props.get("push") else None
    if pushed is not None:
        outs.update(digest=pushed, image=pushed, built=False)
        return outs
    members = [
        Member(ResolvedModel.from_dict(m["model"]), str(m["image"]), str(m["content_hash"]))
        for m in props["members"]
    ]
    settings = settings_from_dict(props["build"], login)
    result = build_pack_image(props["pack"], members, settings, props["image_ref"])
    digest = docker_cli.push(result.image_ref, login, result.image_id) if props.get("push") else ""
    outs.update(digest=digest, image=deployable_ref(result.image_ref, digest), built=result.built)
    return outs


class PackImageProvider(ResourceProvider):
    """Stacks and pushes a pack image in create/update only; diff compares hashes."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = stack_and_push(props)
        return CreateResult(id_=outs["image_ref"], outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        old, new = plain(olds), plain(news)
        changed = [k for k in IMAGE_KEYS if old.get(k) != new.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=stack_and_push(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Images stay in the registry: a rollback needs them.
        return None


class PackImage(pulumi.dynamic.Resource, module="fleet", name="PackImage"):
    """A pack's container image, pushed to the stack's registry."""

    image: pulumi.Output[str]
    """Reference to deploy: `repo@sha256:...` after a push, else `repo:hash`."""
    digest: pulumi.Output[str]
    content_hash: pulumi.Output[str]
    image_ref: pulumi.Output[str]

    def __init__(
        self, name: str, args: PackImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props = {**pack_image_inputs(args), "image": None, "digest": None, "built": None}
        planned: str = props["content_hash"]
        super().__init__(PackImageProvider(), name, props, opts)
        self.planned_hash = planned
        """The pack's hash, computed at program time (a plain string)."""
