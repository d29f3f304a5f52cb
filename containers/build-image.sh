#!/usr/bin/env bash
# Build medscan's container image from the repository root with podman (or docker).
#
#   bash containers/build-image.sh                    # medscan:<version>-cuda12 (CUDA base, gpu extra)
#   VARIANT=cpu BASE_IMAGE=debian:bookworm-slim \
#     bash containers/build-image.sh                  # medscan:<version>-cpu (CPU torch wheels)
#   bash containers/build-image.sh --build-arg EXTRAS=ct   # extra arguments go to `build`
#   bash containers/build-image.sh --print-image           # only print the tag it would build
#
# IMAGE overrides the tag. Behind a TLS-intercepting proxy set HOST_CA=/etc/ssl/certs/ca-certificates.crt:
# the CA is mounted for pip during the build only (podman), never copied into the image.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
VARIANT="${VARIANT:-cuda12}"
IMAGE="${IMAGE:-medscan:${version}-${VARIANT}}"
ENGINE="${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}"
if [ "${1:-}" = --print-image ]; then echo "$IMAGE"; exit 0; fi

args=(build -f containers/Dockerfile -t "$IMAGE")
[ "$ENGINE" = podman ] && args+=(--format docker)   # keep SHELL (pipefail); OCI format drops it
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
if [ "$VARIANT" = cpu ]; then
  args+=(--build-arg "PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
fi
if [ "$ENGINE" = podman ]; then
  # chroot isolation builds on hosts without a usable cgroup setup for crun (hybrid cgroups).
  args+=(--isolation=chroot --ignorefile containers/Dockerfile.dockerignore)
  if [ -n "${HOST_CA:-}" ]; then
    args+=(-v "$HOST_CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  fi
fi
start=$(date +%s)
"$ENGINE" "${args[@]}" "$@" .
echo "[build-image] $IMAGE built in $(( $(date +%s) - start )) s"
