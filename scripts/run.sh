#!/usr/bin/env bash
# Set up medscan on a fresh Debian/Ubuntu machine, from nothing, then run one thing.
#
#   bash scripts/run.sh demo   # CT extra only; segments the embedded sample CT into ./outputs/demo
#   bash scripts/run.sh test   # everything (all extras, system tools); runs the whole test suite
#
# System packages come from apt (root, or sudo), Python packages from PyPI into ./.venv.
# torch/torchvision are pinned in ci/constraints.txt to the build these machines carry.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode="${1:-test}"
PY="${PYTHON:-python3}"

DEMO_APT=(python3-venv)
TEST_APT=(
  python3-venv
  dcm2niix pigz                                   # reference DICOM->NIfTI conversion in tests
  dcmtk                                           # JPEG / JPEG-LS encoders of the DICOM corpus test
  xvfb libxcb-icccm4 libxcb-keysyms1              # napari under a virtual X display
  slurm-wlm munge slurmdbd mariadb-server         # a real one-node Slurm cluster with accounting
  podman buildah runc debootstrap                 # container build and run, no registry needed
)

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "[medscan] apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

venv() {
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
}

case "$mode" in
  demo)
    command -v apt-get >/dev/null && apt_install "${DEMO_APT[@]}"
    venv
    .venv/bin/pip install -q -e '.[ct]'
    .venv/bin/medscan segment output=outputs/demo
    echo "[medscan] results in outputs/demo (to look at them in napari: .venv/bin/pip install -e '.[viewer]' && .venv/bin/medscan view outputs/demo)"
    ;;
  test)
    command -v apt-get >/dev/null && apt_install "${TEST_APT[@]}"
    venv
    .venv/bin/pip install -q -c ci/constraints.txt torch torchvision
    .venv/bin/pip install -q -c ci/constraints.txt -e '.[dev]'
    .venv/bin/ruff check .
    .venv/bin/python -m pytest "${@:2}"   # gpu-marked tests skip with the reason where there is no GPU
    ;;
  *)
    echo "usage: bash scripts/run.sh demo|test [pytest args]" >&2
    exit 2
    ;;
esac
