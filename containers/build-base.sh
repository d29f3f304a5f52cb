#!/usr/bin/env bash
# Make a local Debian base image (python3, venv, CA certificates) with debootstrap, for machines
# that reach Debian's mirror but no container registry (the CI machines). Import it under the tag
# the Dockerfile's BASE_IMAGE build argument then names:
#
#   sudo bash containers/build-base.sh                       # -> localhost/medscan-base:bookworm
#   sudo podman build --isolation=chroot -f containers/Dockerfile \
#        --build-arg BASE_IMAGE=localhost/medscan-base:bookworm --build-arg EXTRAS=ct -t medscan:cpu .
#
# An image already in podman's store under TAG is reused (MEDSCAN_REBUILD_BASE=1 forces a rebuild).
# Needs root, debootstrap and podman (Debian: apt-get install debootstrap podman buildah runc).
set -euo pipefail
TAG="${1:-localhost/medscan-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if [ "${MEDSCAN_REBUILD_BASE:-0}" != 1 ] && podman image exists "$TAG"; then
  echo "[build-base] $TAG exists; reusing it"
  exit 0
fi
work="$(mktemp -d /tmp/medscan-base-XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "[build-base] debootstrap $SUITE (minbase + python3) from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
# Leave no package caches or lists in the image (a Dockerfile's apt-get update fetches fresh ones).
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
podman import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  "$work/rootfs.tar" "$TAG" >/dev/null
echo "[build-base] imported $TAG ($(podman image inspect --format '{{.Size}}' "$TAG") bytes)"
