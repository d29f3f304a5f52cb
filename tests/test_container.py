"""Container recipes: hadolint, the Apptainer definition, and a real podman build + run.

No registry and no Apptainer are reachable here (docs/hpc.md, "Testing"): the build uses a base
image made locally with debootstrap, tagged as the name the BASE_IMAGE build argument gets, and
the Apptainer definition is checked with our own parser (plus spython on a docker-header copy).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
DOCKERFILE = CONTAINERS / "Dockerfile"
DEFFILE = CONTAINERS / "medscan.def"
BASE_TAG = "localhost/medscan-base:bookworm"
TEST_IMAGE = "localhost/medscan:test-cpu"
VERSION = re.search(r'(?m)^version = "(.+)"', (REPO / "pyproject.toml").read_text()).group(1)
# Sections an Apptainer definition may have (apptainer docs, "Definition Files").
DEF_SECTIONS = {
    "setup", "files", "environment", "post", "runscript", "startscript", "test", "labels", "help",
    "arguments",
}  # fmt: skip
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--rm",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]  # fmt: skip


# ----------------------------------------------------------------------------- .def parser


class DefError(ValueError):
    """A definition file we would not hand to ``apptainer build``."""


def parse_def(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Split an Apptainer definition into its header (``Key: value``) and ``%section`` bodies.

    Raises
    ------
    DefError
        On an unknown or repeated section, a header line without ``:``, or header keys after
        the first section.
    """
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^%(\w+)\b", line)
        if match:
            name = match.group(1).lower()
            if name not in DEF_SECTIONS and not name.startswith("app"):
                raise DefError(f"line {number}: unknown section %{name}")
            if name in sections:
                raise DefError(f"line {number}: section %{name} repeated")
            sections[name], current = [], name
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            if not sep:
                raise DefError(f"line {number}: header line without ':': {line!r}")
            header[key.strip().lower()] = value.strip()
    bodies = {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}
    return header, bodies


def test_parse_def_rejects_broken_files() -> None:
    with pytest.raises(DefError, match="unknown section %runscipt"):
        parse_def("Bootstrap: docker\nFrom: x\n%runscipt\n  exec x\n")
    with pytest.raises(DefError, match="repeated"):
        parse_def("Bootstrap: docker\nFrom: x\n%help\na\n%help\nb\n")
    with pytest.raises(DefError, match="without ':'"):
        parse_def("Bootstrap docker\n")


# ----------------------------------------------------------------------------- static checks


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    assert found, f"{name} not found (pip install -e '.[dev]' provides it)"
    return found


def test_hadolint_passes() -> None:
    proc = subprocess.run(
        [_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1).startswith("nvidia/cuda:12.") and "runtime" in base.group(1)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)  # non-root
    assert 'ENTRYPOINT ["medscan"]' in text
    assert f'org.opencontainers.image.version="{VERSION}"' in text
    assert "ca-certificates.crt" not in re.sub(r"^#.*$", "", text, flags=re.M)  # CA never baked


def test_def_file_names_the_dockerfile_image() -> None:
    header, sections = parse_def(DEFFILE.read_text())
    assert header["bootstrap"] in {"docker-daemon", "docker-archive", "docker"}
    image = subprocess.run(
        ["bash", str(CONTAINERS / "build-image.sh"), "--print-image"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert image == f"medscan:{VERSION}-cuda12"
    assert header["from"] == image
    assert {"labels", "environment", "runscript", "test", "help"} <= set(sections)
    labels = dict(line.split(None, 1) for line in sections["labels"].splitlines() if line.strip())
    assert labels["org.opencontainers.image.version"] == VERSION
    assert 'exec /opt/medscan/bin/medscan "$@"' in sections["runscript"]
    assert "/opt/medscan" in DOCKERFILE.read_text()  # the venv the runscript calls
    assert "apptainer exec --nv" in sections["help"]


def test_def_file_parses_with_spython(tmp_path: Path) -> None:
    """Second opinion: spython only knows `Bootstrap: docker`, so parse a copy with that header."""
    from spython.main.parse.parsers import SingularityParser

    copy = tmp_path / "medscan-docker.def"
    copy.write_text(re.sub(r"(?m)^Bootstrap: \S+", "Bootstrap: docker", DEFFILE.read_text()))
    recipe = SingularityParser(str(copy)).recipe["spython-base"]
    assert recipe.fromHeader == f"medscan:{VERSION}-cuda12"
    assert any(f"org.opencontainers.image.version {VERSION}" in label for label in recipe.labels)
    assert "medscan" in str(recipe.cmd)


def test_sbatch_examples_run_medscan_in_apptainer() -> None:
    scripts = sorted((CONTAINERS / "slurm").glob("*.sbatch"))
    assert len(scripts) >= 3
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/bin/bash"), script
        assert "#SBATCH" in text, script
        assert re.search(r"apptainer exec --nv \S+ medscan (segment|train)", text), script
        subprocess.run(["bash", "-n", str(script)], check=True)  # shell syntax


# ----------------------------------------------------------------------------- build and run


def _ensure_tools() -> None:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if not missing:
        return
    assert os.geteuid() == 0, f"missing {missing}: apt-get install podman buildah runc debootstrap"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    "podman", "buildah", "runc", "debootstrap"], env=env, check=True)  # fmt: skip


@pytest.fixture(scope="module")
def cpu_image() -> str:
    """The Dockerfile built on a debootstrap base with the CPU `ct` (+`hpc`) extras."""
    _ensure_tools()
    start = time.monotonic()
    subprocess.run(["bash", str(CONTAINERS / "build-base.sh"), BASE_TAG], check=True, timeout=900)
    base_s = time.monotonic() - start
    args = [
        "podman", "build", "--isolation=chroot", "--format", "docker", "--layers=false",
        "--ignorefile", str(CONTAINERS / "Dockerfile.dockerignore"),
        "-f", str(DOCKERFILE), "-t", TEST_IMAGE,
        "--build-arg", f"BASE_IMAGE={BASE_TAG}",
        "--build-arg", "EXTRAS=ct,hpc",  # no torch: keeps the test build short
        "--build-arg", "SYSTEM_PACKAGES=python3 python3-venv ca-certificates",
    ]  # fmt: skip
    if HOST_CA.exists():  # this machine's TLS proxy CA, for pip during the build only
        args += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    start = time.monotonic()
    proc = subprocess.run([*args, str(REPO)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    size = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", TEST_IMAGE],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    print(f"\nbase image {base_s:.0f} s (0 when cached); medscan image built in "
          f"{time.monotonic() - start:.0f} s, {int(size) / 1e6:.0f} MB")  # fmt: skip
    yield TEST_IMAGE
    subprocess.run(["podman", "rmi", "-f", TEST_IMAGE], capture_output=True)


@pytest.mark.slow
def test_image_runs_segment_on_the_sample(cpu_image: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image runs as uid 10001
    proc = subprocess.run(
        [*PODMAN_RUN, "-v", f"{out}:/out", cpu_image, "segment", "output=/out", "progress=false"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    case = out / rows[0]["case_id"]
    manifest = json.loads((case / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["coordinate_space"] == "LPS"
    for name in ("volume.nii.gz", "labels.nii.gz", "metrics.json", "preview.png"):
        assert (case / name).stat().st_size > 0, name
    metrics = json.loads((case / "metrics.json").read_text())
    assert metrics["lung_volume_ml"] > 250  # a chest CT: both lungs found inside the image
    assert (case / "volume.nii.gz").stat().st_uid == 10001  # written by the non-root user


@pytest.mark.slow
def test_def_test_and_runscript_work_in_the_image(cpu_image: str) -> None:
    """Run the .def's %test and %runscript bodies in the built image (what Apptainer would)."""
    _, sections = parse_def(DEFFILE.read_text())
    env = ["-e", "PATH=/opt/medscan/bin:/usr/bin:/bin"]
    test = subprocess.run(
        [*PODMAN_RUN, *env, "--entrypoint", "/bin/sh", cpu_image, "-c", sections["test"]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr
    assert "extras: ct,hpc" in test.stdout
    run = subprocess.run(
        [*PODMAN_RUN, *env, "--entrypoint", "/bin/sh", cpu_image,
         "-c", sections["runscript"], "runscript", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and "medscan <command>" in run.stdout, run.stdout + run.stderr
