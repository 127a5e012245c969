"""`fleet build`: a bento per model (and a container image with --image), cached by hash."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fleet.commands import add_fleet_args, fleet_of, registry
from fleet.errors import FleetError
from fleet.host.images import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_REGISTRY,
    BuildSettings,
    build_bento,
    build_image,
)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "build",
        help="build each model's bento (and image), skipping those whose content hash exists",
    )
    add_fleet_args(parser)
    parser.add_argument("names", nargs="*", metavar="MODEL", help="only these models")
    parser.add_argument("--image", action="store_true", help="also build the container image")
    parser.add_argument(
        "--registry", default=DEFAULT_REGISTRY, help=f"image name prefix ({DEFAULT_REGISTRY})"
    )
    parser.add_argument(
        "--base-image",
        default=DEFAULT_BASE_IMAGE,
        help=f"image to build FROM ({DEFAULT_BASE_IMAGE})",
    )
    parser.add_argument(
        "--ca-bundle", type=Path, default=None, help="extra CA bundle (PEM) trusted in the image"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ca_bundle is not None and not args.ca_bundle.is_file():
        print(f"error: --ca-bundle {args.ca_bundle} is not a file", file=sys.stderr)
        return 2
    fleet = fleet_of(args)
    if args.names:
        fleet = fleet.only(args.names)
    source = registry(args)
    resolved = source.resolve(fleet)
    settings = BuildSettings(
        registry=args.registry, base_image=args.base_image, ca_bundle=args.ca_bundle
    )
    width = max((len(r.name) for r in resolved), default=0)
    failed = 0
    for r in resolved:
        try:
            if args.image:
                image = build_image(r, source, settings)
                what, built, chash = image.image_ref, image.built, image.content_hash
            else:
                bento = build_bento(r, source, settings)
                what, built, chash = bento.tag, bento.built, bento.content_hash
        except FleetError as exc:  # one broken model does not stop the others
            print(f"{r.name:<{width}}  failed: {exc}", flush=True)
            failed += 1
            continue
        print(f"{r.name:<{width}}  {chash}  {'built' if built else 'cached'}  {what}", flush=True)
    if failed:
        print(f"error: {failed} of {len(resolved)} model(s) failed to build", file=sys.stderr)
    return 1 if failed else 0
