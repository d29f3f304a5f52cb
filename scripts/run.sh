#!/usr/bin/env bash
# Set up medscan on a fresh Debian/Ubuntu machine, from nothing, then run one thing.
#
#   bash scripts/run.sh demo   # CT extra only; segments the embedded sample CT into ./outputs/demo
#   bash scripts/run.sh test   # everything (all extras, system tools); runs the whole test suite
#
# System packages come from apt (root, or sudo), Python packages from PyPI into ./.venv.
# Sizes and times (README.md): demo ~0.6 GB venv, about a minute with a warm pip cache; test
# several GB (torch), 15+ minutes.
#
# torch/torchvision: a torch already in .venv that satisfies pyproject.toml (torch>=2.2,
# torchvision>=0.17) is kept, e.g. a CPU-only build installed first from the PyTorch index
# (README.md); only without one are the versions pinned in ci/constraints.txt installed.
# MEDSCAN_TORCH=pinned forces the pinned build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode="${1:-test}"
PY="${PYTHON:-python3}"

DEMO_APT=(python3-venv)
TEST_APT=(
  python3-venv
  dcm2niix pigz                                   # reference DICOM->NIfTI conversion in tests
  dcmtk                                           # JPEG / JPEG-LS encoders of the DICOM corpus test
  dicom3tools                                     # dciodvfy: IOD check of the DICOM SEG output
  xvfb libxcb-icccm4 libxcb-keysyms1              # napari under a virtual X display
  chromium                                        # headless browser: the batch index.html gallery
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

# setuptools prints a 10-line "Editable installation" note on every editable install of a
# project whose packages map to other folders (conf/ -> medscan_conf): information only, hidden.
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation:UserWarning"

venv() {
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
}

# True when .venv has a torch/torchvision the code accepts (the minimums in pyproject.toml).
torch_ok() {
  .venv/bin/python - <<'PY' 2>/dev/null
import re
import sys
from importlib.metadata import version


def release(v):  # "2.14.1+cpu" -> (2, 14)
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:2])


need = {"torch": (2, 2), "torchvision": (0, 17)}
try:
    ok = all(release(version(name)) >= minimum for name, minimum in need.items())
except Exception:
    ok = False
sys.exit(0 if ok else 1)
PY
}

# Warns (does not stop) when the disk looks too small for `test`: a full disk otherwise shows up
# minutes later as pip's "[Errno 28] No space left on device" half-way through an install.
# Sizes measured on a fresh clone (README.md): .venv 8.3 GB with the pinned CUDA torch, and the
# test suite's temporary files (pytest's basetemp under $TMPDIR) 6.8 GB; apt's packages about 1 GB.
disk_check() {
  local venv_gb=$1 tmp_gb=7 tmp="${TMPDIR:-/tmp}" what=".venv and apt packages"
  local repo_fs tmp_fs repo_free tmp_free
  # One df per path gives its filesystem and free GB; a check that cannot read the disk says
  # nothing rather than stopping the run (set -e).
  read -r repo_fs repo_free < <(df -Pk . 2>/dev/null | awk 'NR==2 {print $1, int($4 / 1048576)}') \
    || return 0
  read -r tmp_fs tmp_free < <(df -Pk "$tmp" 2>/dev/null | awk 'NR==2 {print $1, int($4 / 1048576)}') \
    || return 0
  if [ "$repo_fs" = "$tmp_fs" ]; then
    venv_gb=$((venv_gb + tmp_gb))
    tmp_gb=0
    what="$what, temporary files"
  fi
  if [ "$repo_free" -lt "$venv_gb" ]; then
    echo "[medscan] warning: $repo_free GB free on the disk of $(basename "$PWD"), the tests" \
      "need about $venv_gb GB there ($what); installs may fail with" \
      "'No space left on device'" >&2
  fi
  if [ "$tmp_gb" -gt 0 ] && [ "$tmp_free" -lt "$tmp_gb" ]; then
    echo "[medscan] warning: $tmp_free GB free in $tmp, the tests' temporary files need about" \
      "$tmp_gb GB; set TMPDIR to a larger disk" >&2
  fi
}

case "$mode" in
  demo)
    command -v apt-get >/dev/null && apt_install "${DEMO_APT[@]}"
    venv
    .venv/bin/pip install -q -e '.[ct]'
    .venv/bin/medscan segment output=outputs/demo
    echo "[medscan] results in outputs/demo; all cases: outputs/demo/index.html"
    for preview in outputs/demo/*/preview.png; do
      [ -f "$preview" ] && echo "[medscan] preview: $preview"
    done
    echo "[medscan] next: source .venv/bin/activate (or call .venv/bin/medscan), then medscan --help;"
    echo "[medscan] napari: .venv/bin/pip install -e '.[viewer]' && .venv/bin/medscan view outputs/demo"
    ;;
  test)
    if torch_ok; then disk_check 2; else disk_check 10; fi   # GB: .venv, apt packages
    command -v apt-get >/dev/null && apt_install "${TEST_APT[@]}"
    venv
    constraints=ci/constraints.txt
    if [ "${MEDSCAN_TORCH:-keep}" != pinned ] && torch_ok; then
      echo "[medscan] keeping the installed torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
      constraints="$(mktemp)"
      trap 'rm -f "$constraints"' EXIT
      grep -v -E '^(torch|torchvision)([=<>!~ ]|$)' ci/constraints.txt > "$constraints" || true
    else
      .venv/bin/pip install -q -c ci/constraints.txt torch torchvision
    fi
    .venv/bin/pip install -q -c "$constraints" -e '.[dev]'
    .venv/bin/ruff check .
    .venv/bin/python -m pytest "${@:2}"   # gpu-marked tests skip with the reason where there is no GPU
    ;;
  *)
    echo "usage: bash scripts/run.sh demo|test [pytest args]" >&2
    exit 2
    ;;
esac
