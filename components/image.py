"""The model image as a Pulumi dynamic resource: build and push only when the hash changes.

The content hash (`fleet.host.images.content_hash`) is computed at program time: it is pure and
cheap. The provider compares it with the hash in state, so `preview` and an `up` with no
change do no work, even on a fresh CI runner with no Docker cache; building and pushing
happen only in `create`/`update`. The provider holds no state of its own and is pickled
by reference (its module must be importable where the engine runs the provider).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components.config import RegistryAuth
from components.wire import outputs_of, plain, resolved_of
from fleet.host import docker_cli
from fleet.host.images import BuildSettings, build_image, content_hash
from fleet.host.registry import Registry
from fleet.resolved import ResolvedModel

# Inputs whose change means a different image; anything else (a rotated token, a new
# tracking URI for the same model) must not trigger a rebuild.
IMAGE_KEYS = ("content_hash", "image_ref", "push")


@dataclass(frozen=True)
class ModelImageArgs:
    """What a model image is built from."""

    resolved: ResolvedModel
    """The model, pinned to a registry version."""
    build: BuildSettings
    """Registry prefix, base image, CA bundle."""
    tracking_uri: str
    """MLflow URI the build downloads the model from."""
    push: bool = True
    """Push to the registry and deploy by digest."""
    auth: RegistryAuth | None = None
    """Registry credentials for the push."""
    mlflow_token: pulumi.Output[str] | None = None
    """MLflow token for the download (secret)."""
    mlflow_username: str | None = None
    """MLflow basic-auth user for the download (`mlflow server --app-name basic-auth`)."""
    mlflow_password: pulumi.Input[str] | None = None
    """Its password (secret)."""


def image_inputs(args: ModelImageArgs) -> dict[str, Any]:
    """The resource's inputs; the hash is computed here, at program time, with no I/O."""
    digest = content_hash(args.resolved, args.build)
    return {
        "model": args.resolved.to_dict(),
        "content_hash": digest,
        "image_ref": f"{args.build.registry}/{args.resolved.model.k8s_name}:{digest}",
        "registry": args.build.registry,
        "build": settings_to_dict(args.build),
        "tracking_uri": args.tracking_uri,
        "push": args.push,
        "registry_server": args.auth.server if args.auth else None,
        "registry_username": args.auth.username if args.auth else None,
        "registry_password": args.auth.password if args.auth else None,
        "mlflow_token": args.mlflow_token,
        "mlflow_username": args.mlflow_username,
        "mlflow_password": args.mlflow_password,
    }


def settings_to_dict(settings: BuildSettings) -> dict[str, Any]:
    """Build settings as plain data; project root and store are where the provider runs."""
    out: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.compare:  # project_root and store do not decide the image
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def settings_from_dict(
    data: dict[str, Any], login: docker_cli.RegistryLogin | None = None
) -> BuildSettings:
    """The inverse of `settings_to_dict`; `login` pulls the base image where it is missing."""
    ca = data.get("ca_bundle")
    return BuildSettings(**{**data, "ca_bundle": Path(ca) if ca else None}, login=login)


def login_of(props: dict[str, Any]) -> docker_cli.RegistryLogin | None:
    """The registry login of a provider's (plain) inputs, if it has one."""
    if not props.get("registry_username"):
        return None
    return docker_cli.RegistryLogin(
        str(props["registry_server"]),
        str(props["registry_username"]),
        str(props.get("registry_password") or ""),
    )


def image_changed(olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
    """The inputs that differ in a way that needs a new image."""
    return [k for k in IMAGE_KEYS if olds.get(k) != news.get(k)]


def deployable_ref(image_ref: str, digest: str) -> str:
    """`repo@sha256:...` when the push returned a digest, else the tag."""
    if not digest:
        return image_ref
    if "@" in digest:
        return digest
    return f"{image_ref.rsplit(':', 1)[0]}@{digest}"


def build_and_push(props: dict[str, Any]) -> dict[str, Any]:
    """Build (cached by tag) and push the image; returns the resource's outputs."""
    props = plain(props)
    resolved = resolved_of(props)
    login = login_of(props)
    settings = settings_from_dict(props["build"], login)
    # The credentials travel with this call's inputs into the worker's environment: four
    # creates on the provider's four threads, each with its own, never mix.
    registry = Registry(
        props["tracking_uri"],
        token=props.get("mlflow_token") or None,
        username=props.get("mlflow_username") or None,
        password=props.get("mlflow_password") or None,
    )
    outs = outputs_of(props)
    # The tag is the content hash: when the registry holds it, the image was built from
    # these inputs already (another stack, a lost cache): nothing is built or pushed.
    pushed = docker_cli.remote_digest(props["image_ref"], login) if props.get("push") else None
    if pushed is not None:
        outs.update(image_id="", digest=pushed, image=pushed, built=False)
        return outs
    result = build_image(resolved, registry, settings)
    if result.content_hash != props["content_hash"]:
        raise RuntimeError(
            f"model '{resolved.name}': content hash {result.content_hash} at build time is "
            f"not the {props['content_hash']} the plan was made with; run the update again"
        )
    digest = docker_cli.push(result.image_ref, login, result.image_id) if props.get("push") else ""
    outs.update(
        image_id=result.image_id,
        digest=digest,
        image=deployable_ref(result.image_ref, digest),
        built=result.built,
    )
    return outs


class ModelImageProvider(ResourceProvider):
    """Builds and pushes a model image in create/update only; diff compares hashes."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = build_and_push(props)
        return CreateResult(id_=outs["image_ref"], outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = image_changed(plain(olds), plain(news))
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # The engine calls update only when diff found a change; build_image is itself
        # cached by tag, so a retried update does not build twice.
        return UpdateResult(outs=build_and_push(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Images stay in the registry: a rollback needs them; retention is the registry's job.
        return None


class ModelImage(pulumi.dynamic.Resource, module="fleet", name="ModelImage"):
    """A model's container image, pushed to the stack's registry."""

    image: pulumi.Output[str]
    """Reference to deploy: `repo@sha256:...` after a push, else `repo:hash`."""
    digest: pulumi.Output[str]
    """Repository digest returned by the push ("" without a push)."""
    content_hash: pulumi.Output[str]
    """The content hash the image was built for."""
    image_ref: pulumi.Output[str]
    """`<registry>/<k8s-name>:<content-hash>`."""

    def __init__(
        self, name: str, args: ModelImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props = {**image_inputs(args), "image": None, "digest": None, "image_id": None}
        props["built"] = None
        planned: str = props["content_hash"]
        super().__init__(ModelImageProvider(), name, props, opts)
        self.planned_hash = planned
        """The content hash computed at program time (a plain string)."""
