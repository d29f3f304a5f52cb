"""A no-op rerun answered from the run's record (medscan.rerun), and every change that must not be.

Each test runs the real ``medscan segment`` on the embedded sample series (30 slices, no preview
or report to keep it short), then reruns it. The fast answer must print the same cases table and
counts as the full check (``MEDSCAN_RERUN_CHECK=full``), import neither Hydra, pydicom nor
NumPy, and never be given when the inputs, the case folders, the command line or the secret
changed: then the job runs, and a changed input is processed again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medscan import rerun

MEDSCAN = [sys.executable, "-m", "medscan.cli"]
FAST = "nothing changed since the run of"
OPTIONS = ["progress=false", "preview=false", "report=false"]  # plain: no Hydra parser


def _make_inputs(sample_ct: Path, folder: Path) -> Path:
    """The sample series and one stray text file; aged past rerun.RACY_S (ctime cannot be set)."""
    shutil.copytree(sample_ct, folder)
    (folder / "notes.txt").write_text("not DICOM\n")
    time.sleep(rerun.RACY_S + 0.2)
    return folder


@pytest.fixture(scope="module")
def inputs(sample_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs shared by the tests that do not change them."""
    # an archive folder named after the patient, as found in hospitals: never in the record
    return _make_inputs(sample_ct, tmp_path_factory.mktemp("rerun") / "DOE_JANE-MRN12345")


def _segment(source: Path, output: Path, *extra: str, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDSCAN, "segment", f"input={source}", f"output={output}",
                           *OPTIONS, *extra], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def _summary(stderr: str) -> list[str]:
    """The cases table and the counts line of a run's stderr (log lines and the note left out)."""
    keep = [line.rstrip() for line in stderr.splitlines()
            if line.startswith(("│", "┃")) or re.match(r"\d+ ok, ", line)]
    return keep


@pytest.fixture
def done(inputs: Path, tmp_path: Path) -> Path:
    """An output folder after one complete run (exit 0) on the shared inputs."""
    out = tmp_path / "out"
    first = _segment(inputs, out)
    assert first.returncode == 0, first.stderr[-2000:]
    assert FAST not in first.stderr
    return out


def test_noop_rerun_is_answered_with_the_full_checks_summary(inputs: Path, done: Path) -> None:
    fast = _segment(inputs, done)
    full = _segment(inputs, done, env={rerun.CHECK_ENV: "full"})
    assert fast.returncode == full.returncode == 0
    assert FAST in fast.stderr and FAST not in full.stderr
    assert _summary(fast.stderr) == _summary(full.stderr)
    assert "1 skipped; 1 file(s) skipped by the loader" in fast.stderr
    assert "notes.txt" in fast.stderr  # the loader-skipped file, named relative to the input


def test_fast_answer_imports_no_hydra_pydicom_or_numpy(inputs: Path, done: Path) -> None:
    code = ("import sys; from medscan.cli import main; "
            f"rc = main(['segment', 'input={inputs}', 'output={done}', *{OPTIONS!r}]); "
            "print(rc, [m for m in ('hydra', 'pydicom', 'numpy') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert FAST in r.stderr
    assert r.stdout.split("\n")[0] == "0 []"


def test_record_names_no_path_or_file(inputs: Path, done: Path) -> None:
    (record,) = (done / rerun.RECORD_DIR).glob("rerun-*.json")
    text = record.read_text()
    for name in ("notes.txt", "DOE", "JANE", "MRN12345", str(done), str(inputs.parent)):
        assert name not in text
    assert sorted(p.name for p in inputs.iterdir() if p.suffix == ".dcm")[0] not in text


def test_input_rewritten_with_same_size_and_mtime_is_processed_again(
        sample_ct: Path, tmp_path: Path) -> None:
    """ctime cannot be reset: a same-size rewrite with mtime restored is still seen, and the
    full run, hashing contents, processes the case again."""
    source = _make_inputs(sample_ct, tmp_path / "in")
    out = tmp_path / "out"
    assert _segment(source, out).returncode == 0
    victim = sorted(source.glob("*.dcm"))[5]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01  # one pixel bit of the last pixel: same size
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    again = _segment(source, out)
    assert FAST not in again.stderr
    assert "1 ok, 0 failed, 0 skipped" in again.stderr  # redone: its input hash changed


@pytest.mark.parametrize("change", ["add_input", "remove_stray", "rename_input"])
def test_changed_input_tree_runs_the_job(sample_ct: Path, tmp_path: Path, change: str) -> None:
    source = _make_inputs(sample_ct, tmp_path / "in")
    out = tmp_path / "out"
    assert _segment(source, out).returncode == 0
    if change == "add_input":
        (source / "more.txt").write_text("another stray file\n")
    elif change == "remove_stray":
        (source / "notes.txt").unlink()
    else:
        first = sorted(source.glob("*.dcm"))[0]
        first.rename(first.with_name("renamed-" + first.name))
    again = _segment(source, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert FAST not in again.stderr


@pytest.mark.parametrize("change", ["edit_metrics", "remove_case_file", "remove_index",
                                    "garbage_index", "remove_gallery", "new_case_folder"])
def test_changed_output_runs_the_job(inputs: Path, done: Path, change: str) -> None:
    (case,) = [p for p in done.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if change == "edit_metrics":
        text = (case / "metrics.json").read_text()
        (case / "metrics.json").write_text(text)  # same bytes, new ctime: not trusted
    elif change == "remove_case_file":
        (case / "qc.json").unlink()
    elif change == "remove_index":
        (done / "index.csv").unlink()
    elif change == "garbage_index":
        (done / "index.csv").write_text("garbage\n")
    elif change == "remove_gallery":
        (done / "index.html").unlink()
    else:
        (done / "ct-0000000000").mkdir()
    again = _segment(inputs, done)
    assert FAST not in again.stderr
    if change in ("remove_index", "garbage_index", "remove_gallery"):  # rebuilt by the job
        assert again.returncode == 0 and (done / "index.html").is_file()
        assert (done / "index.csv").read_text().startswith("case_id")


@pytest.mark.parametrize("change", ["override", "override_order", "secret", "overwrite",
                                    "full_check", "multirun_flag"])
def test_other_command_or_secret_runs_the_job(inputs: Path, done: Path, change: str) -> None:
    extra: list[str] = []
    env: dict[str, str] = {}
    if change == "override":
        extra = ["lease_s=901"]
    elif change == "override_order":  # the same overrides in another order: another key
        r = subprocess.run([*MEDSCAN, "segment", *reversed(OPTIONS), f"input={inputs}",
                            f"output={done}"], capture_output=True, text=True, timeout=600)
        assert FAST not in r.stderr
        return
    elif change == "secret":
        env = {"MEDSCAN_ID_SECRET": "another-project-secret-" + "cd" * 16}
    elif change == "overwrite":
        extra = ["overwrite=true"]
    elif change == "full_check":
        env = {rerun.CHECK_ENV: "full"}
    else:
        extra = ["--multirun"]
    again = _segment(inputs, done, *extra, env=env)
    assert FAST not in again.stderr, change


def test_no_record_after_a_failed_case(sample_ct: Path, tmp_path: Path) -> None:
    """Exit 1 (a series too short to mesh fails its case): nothing recorded, reruns run."""
    source = tmp_path / "in"
    source.mkdir()
    for f in sorted(sample_ct.glob("*.dcm"))[:2]:
        shutil.copy2(f, source / f.name)
    time.sleep(rerun.RACY_S + 0.2)
    out = tmp_path / "out"
    first = _segment(source, out)
    assert first.returncode == 1, first.stderr[-2000:]
    assert not list((out / rerun.RECORD_DIR).glob("rerun-*.json"))
    assert FAST not in _segment(source, out).stderr


def test_no_record_for_inputs_changed_just_before_the_run(sample_ct: Path,
                                                           tmp_path: Path) -> None:
    """Inputs younger than RACY_S could change again within one timestamp tick: not recorded."""
    source = tmp_path / "in"
    shutil.copytree(sample_ct, source)
    out = tmp_path / "out"
    assert _segment(source, out).returncode == 0
    assert not list((out / rerun.RECORD_DIR).glob("rerun-*.json"))


def test_quoted_input_path_is_answered_too(sample_ct: Path, tmp_path: Path) -> None:
    """A DICOM person-name folder (``^``) must be quoted for Hydra; the rerun reads it alike."""
    source = _make_inputs(sample_ct, tmp_path / "DOE^JANE")
    out = tmp_path / "out"
    args = [*MEDSCAN, "segment", f"input='{source}'", f"output={out}", *OPTIONS]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and FAST in again.stderr
    assert "DOE" not in next((out / rerun.RECORD_DIR).glob("rerun-*.json")).read_text()


def test_case_folder_changed_during_the_run_is_not_recorded(inputs: Path, done: Path,
                                                            monkeypatch) -> None:
    """A case edited or removed after the run finished it (napari while the batch goes on):
    its row is out of date, so no record; left as the run left it, the record is written."""
    (case,) = [p for p in done.iterdir() if p.is_dir() and not p.name.startswith(".")]
    rows = [(case.name, "skipped", "unchanged inputs and config", 0.0)]
    for change in (None, "edit", "remove"):
        monkeypatch.setattr(rerun, "_armed", "k" * 64)
        start = rerun.begin(inputs, None)
        rerun.case_finished(done, case.name)
        if change == "edit":
            (case / "qc.json").write_text((case / "qc.json").read_text())
        elif change == "remove":
            shutil.rmtree(case)
        assert rerun.finish(start, inputs, done, None, rows, [], [], 0) is (change is None)
        rerun.disarm()


def test_overwrite_takes_true_or_false_only(inputs: Path, done: Path) -> None:
    """``overwrite=no`` used to overwrite (a non-empty string is true); now the job refuses it,
    and the fast answer leaves every value but false to the job."""
    for word in ("no", "No", "0"):
        r = _segment(inputs, done, f"overwrite={word}")
        assert r.returncode == 2 and FAST not in r.stderr, (word, r.stderr[-500:])
        assert "overwrite takes true or false" in r.stderr
    assert FAST not in _segment(inputs, done, "overwrite=false").stderr  # a new command line
    assert FAST in _segment(inputs, done, "overwrite=false").stderr


def test_salt_null_is_no_salt(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _segment(inputs, out, "salt=null").returncode == 0
    assert FAST in _segment(inputs, out, "salt=null").stderr


def test_input_with_a_future_mtime_is_recorded(sample_ct: Path, tmp_path: Path) -> None:
    """Only ctime (the kernel's clock) decides whether inputs are too fresh to trust: a file
    with a wrong (future) mtime from a scanner or an archive does not disable the answer."""
    source = tmp_path / "in"
    shutil.copytree(sample_ct, source)
    future = time.time_ns() + 5 * 365 * 86400 * 10**9
    first = sorted(source.glob("*.dcm"))[0]
    os.utime(first, ns=(future, future))
    time.sleep(rerun.RACY_S + 0.2)
    out = tmp_path / "out"
    assert _segment(source, out).returncode == 0
    assert FAST in _segment(source, out).stderr
