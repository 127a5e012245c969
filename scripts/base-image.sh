#!/usr/bin/env bash
# Make the model image's base: Debian bookworm (Python 3.11) from debootstrap, with the
# machine's CA bundle, imported into the local Docker engine. Used where no image registry
# is reachable (air-gapped clusters, CI here); elsewhere set `baseImage` to any image
# that has python3.11 and python3-venv.
set -euo pipefail
tag="${1:-model-fleet/base:bookworm}"
docker_bin="${DOCKER:-/usr/bin/docker}"
if "$docker_bin" image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag already present"; exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
root="$(mktemp -d /tmp/fleet-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
  bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
chmod 755 "$root"  # mktemp made it 0700; non-root users in the image need to traverse /
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
tar -C "$root" -c . | "$docker_bin" import \
  -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt UV_NATIVE_TLS=1 LANG=C.UTF-8' \
  - "$tag"
echo "base image $tag built"
