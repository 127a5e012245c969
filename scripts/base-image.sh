#!/usr/bin/env bash
# Make the images' base: Debian bookworm (Python 3.11) from debootstrap, with the
# machine's CA bundle, imported into the local Docker engine as TAG (default
# model-fleet/base:bookworm). With PUSH_TO (`registry/fleet/base:bookworm`), also push it
# there and print its digest reference: set that as the stack's `fleet:baseImage`, so
# every runner builds FROM the same bytes and the content hash names them.
#   scripts/base-image.sh [TAG] [PUSH_TO]
# The push uses the caller's Docker client config (`docker login`, or DOCKER_CONFIG).
set -euo pipefail
tag="${1:-model-fleet/base:bookworm}"
push_to="${2:-}"
docker_bin="${DOCKER:-/usr/bin/docker}"
if "$docker_bin" image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already present" >&2
else
  command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
  root="$(mktemp -d /tmp/fleet-base.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
    bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  chmod 755 "$root"  # mktemp made it 0700; non-root users in the image need to traverse /
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  tar -C "$root" -c . | "$docker_bin" import \
    -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt UV_NATIVE_TLS=1 LANG=C.UTF-8' \
    - "$tag" >&2
  echo "base image $tag built" >&2
fi
if [ -n "$push_to" ]; then
  "$docker_bin" tag "$tag" "$push_to"
  "$docker_bin" push --quiet "$push_to" >&2
  # The digest reference of what was pushed: fleet:baseImage.
  "$docker_bin" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$push_to" \
    | grep -m1 "^${push_to%:*}@"
fi
