#!/usr/bin/env bash
# Build a local Python 3.11 base image (Debian bookworm) when registries that
# serve python:3.11-slim are unreachable. Needs root, debootstrap and buildah.
# Usage: scripts/build_base_image.sh [image-name]   (default localhost/py311:base)
set -euo pipefail
image=${1:-localhost/py311:base}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
    bookworm "$rootfs"
# Outbound TLS may be re-signed by a proxy: trust what this machine trusts.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# The Dockerfile calls `python3` and `useradd`, as in python:3.11-slim; bookworm's
# python3 is 3.11, the project's version.
tar -C "$rootfs" -cf "$rootfs.tar" .
container=$(buildah from scratch)
buildah add "$container" "$rootfs.tar" /
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 "$container"
buildah commit --rm "$container" "$image"
echo "built $image"
