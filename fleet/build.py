"""Content-addressed model images: a bento per model and a container image built from it.

The content hash covers everything that decides what the image holds: the model (URI,
version, run id), the service code, the pinned requirements exported from uv.lock, the
base image and the build settings. The image tag is that hash, so an image that exists
under its tag needs no build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.registry import ResolvedModel

DEFAULT_BASE_IMAGE = "model-fleet/base:bookworm"
DEFAULT_REGISTRY = "localhost:5000/fleet"


@dataclass(frozen=True)
class BuildSettings:
    """What decides a model image besides the model itself."""

    registry: str = DEFAULT_REGISTRY
    """Image name prefix (`localhost:5000/fleet`); images are `<registry>/<k8s-name>:<hash>`."""
    base_image: str = DEFAULT_BASE_IMAGE
    """Image to build FROM; needs python3.11 with the venv module."""
    ca_bundle: Path | None = None
    """Extra CA bundle (PEM) trusted inside the image, for TLS-inspecting networks."""
    project_root: Path = Path(__file__).resolve().parent.parent
    """Where uv.lock and the `fleet` sources are read from (a copy in tests)."""


@dataclass(frozen=True)
class ImageResult:
    """A model image and whether this call built it."""

    image_ref: str
    image_id: str
    content_hash: str
    built: bool


def content_hash(resolved: ResolvedModel, settings: BuildSettings) -> str:
    """Hex hash over model URI, version, run id, service code, pinned requirements, base
    image and build settings. Pure and cheap: reads files, no network, no build."""
    raise NotImplementedError


def image_ref(resolved: ResolvedModel, settings: BuildSettings) -> str:
    """`<registry>/<k8s-name>:<content-hash>`."""
    return f"{settings.registry}/{resolved.model.k8s_name}:{content_hash(resolved, settings)}"


def build_image(resolved: ResolvedModel, tracking_uri: str, settings: BuildSettings) -> ImageResult:
    """Build the model image (bento first), unless an image with its tag already exists."""
    raise NotImplementedError


def push_image(ref: str) -> str:
    """Push `ref` to its registry; returns the repository digest (`name@sha256:...`)."""
    raise NotImplementedError
