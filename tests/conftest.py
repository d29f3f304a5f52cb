"""Shared fixtures: where the real data lives, and skips with a reason when it is absent."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "medscan" / "sample"
SAMPLE_CT = SAMPLE / "ct-lungdx-a0002-b40f"
SAMPLE_XRAY = SAMPLE / "xray"
SHARED_DATA = Path(os.environ.get("MEDSCAN_SHARED_DATA", REPO.parent / "shared" / "data"))

# Pseudonym secret (medscan.dicom.identity): tests and the CLI processes they start use a
# throw-away secret file, never the real ~/.config/medscan/id-secret nor a secret from the
# environment. Set at import so that subprocesses inherit it.
_SECRET_DIR = tempfile.mkdtemp(prefix="medscan-test-secret-")
atexit.register(shutil.rmtree, _SECRET_DIR, True)
os.environ["MEDSCAN_ID_SECRET_FILE"] = str(Path(_SECRET_DIR) / "id-secret")
os.environ.pop("MEDSCAN_ID_SECRET", None)
os.environ.pop("MEDSCAN_ID_SALT", None)


def _shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(
            f"needs the shared data set at {path} (not part of a user's clone; "
            "set MEDSCAN_SHARED_DATA to its location)"
        )
    return path


@pytest.fixture(scope="session")
def sample_ct() -> Path:
    """The embedded CC BY 4.0 chest CT series (30 slices)."""
    return SAMPLE_CT


@pytest.fixture(scope="session")
def sample_xray() -> Path:
    """The embedded 16 chest X-rays (ROOT/<CLASS>/*)."""
    return SAMPLE_XRAY


@pytest.fixture(scope="session")
def shared_ct() -> Path:
    """`../shared/data/ct` (four real chest CT series), or skip."""
    return _shared("ct")


@pytest.fixture(scope="session")
def shared_ct_qa() -> Path:
    """`../shared/data/ct-qa` (tilted, unevenly spaced head CT), or skip."""
    return _shared("ct-qa")


@pytest.fixture(scope="session")
def shared_xray() -> Path:
    """`../shared/data/xray` (81 original Kermany JPEGs), or skip."""
    return _shared("xray")


@pytest.fixture(scope="session")
def shared_xray_224() -> Path:
    """`../shared/data/xray-224` (official train split, 224 px), or skip."""
    return _shared("xray-224")


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with its own temp folder as the working directory.

    Anything a test (or a tool it starts: ``sbatch`` writes ``slurm-<job>.out`` into the
    submit folder, Hydra writes ``outputs/``) writes to a relative path lands there, never in
    the repository.
    """
    monkeypatch.chdir(tmp_path)
