"""Batch containment (issue 19 faults 4, 5, 7): per-case errors, job-level errors, concurrent
writers on one output folder, no identity in anything written to the output folder."""

from __future__ import annotations

import contextlib
import gzip
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from batch_inputs import (
    ARCHIVE_DESCRIPTION,
    ARCHIVE_PATIENT_ID,
    archive_tree,
    hostile_description,
    series_copies,
)

from medscan.batch import (
    LEASE_PREFIX,
    _start_ticks,
    case_lock,
    case_writer,
    is_stale,
    remove_stale,
)
from medscan.io import iter_case_dirs, read_case, read_index

MEDSCAN = [sys.executable, "-m", "medscan.cli"]
#: Light settings: what differs between runs is the batch mechanics, not the meshes/previews.
FAST = ["progress=false", "preview=false", "mesh_labels=[lung_left]", "mesh_formats=[ply]"]


def segment(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDSCAN, "segment", *args], capture_output=True, text=True,
                          errors="replace", timeout=timeout)


def start_segment(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*MEDSCAN, "segment", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()
                  if p.name.startswith((".tmp-", ".old-", LEASE_PREFIX, ".write-probe")))


# ---------------------------------------------------------------- leases (fault 5) -----------

def _lease(root: Path, case: str, token: str, host: str, pid: int, ticks: int | None,
           age_s: float = 0.0) -> Path:
    folder = root / f".tmp-{case}-{token}"
    folder.mkdir(parents=True)
    lease = root / f"{LEASE_PREFIX}{case}-{token}.json"
    lease.write_text(json.dumps({"host": host, "pid": pid, "start_ticks": ticks}))
    if age_s:
        t = time.time() - age_s
        os.utime(lease, (t, t))
    return folder


def test_only_provably_stale_temp_folders_are_removed(tmp_path: Path) -> None:
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        ticks = _start_ticks(live.pid)
        keep = [
            _lease(tmp_path, "ct-a", "live", host, live.pid, ticks),            # live writer
            _lease(tmp_path, "ct-a", "remote", "other-node", 1, None, 60),      # fresh lease
        ]
        no_lease_fresh = tmp_path / ".tmp-ct-a-legacy"
        no_lease_fresh.mkdir()
        keep.append(no_lease_fresh)
        gone = [
            _lease(tmp_path, "ct-a", "dead", host, dead.pid, None),             # pid gone
            _lease(tmp_path, "ct-a", "reused", host, live.pid, (ticks or 0) + 7),  # pid reused
            _lease(tmp_path, "ct-a", "expired", "other-node", 1, None, 1000),   # not renewed
            _lease(tmp_path, "ct-a", "mine", host, os.getpid(), _start_ticks(os.getpid())),
        ]
        old_legacy = tmp_path / ".old-ct-a-legacy2"
        old_legacy.mkdir()
        t = time.time() - 1000
        os.utime(old_legacy, (t, t))
        gone.append(old_legacy)
        other_case = _lease(tmp_path, "ct-b", "dead", host, dead.pid, None)
        removed = remove_stale(tmp_path, "ct-a", lease_s=900)
        assert sorted(removed) == sorted(gone)
        assert all(p.exists() for p in keep) and other_case.exists()
        assert not any(p.exists() for p in gone)
        leases = sorted(p.name for p in tmp_path.glob(f"{LEASE_PREFIX}ct-a-*"))
        assert leases == [f"{LEASE_PREFIX}ct-a-live.json", f"{LEASE_PREFIX}ct-a-remote.json"]
    finally:
        live.kill()
        live.wait()


def _stale_seen_by_other_process(folder: str, queue: mp.Queue) -> None:
    queue.put(is_stale(Path(folder), "ct-x", lease_s=0.5))


def test_lease_is_renewed_while_a_slow_case_is_written(tmp_path: Path) -> None:
    """A case taking longer than the lease is not taken for abandoned (the writer renews it);
    once the writer is gone, the same check says stale."""
    ctx = mp.get_context("fork")
    with case_writer(tmp_path, "ct-x", lease_s=0.5) as write:
        time.sleep(1.5)  # three lease periods
        queue: mp.Queue = ctx.Queue()
        p = ctx.Process(target=_stale_seen_by_other_process, args=(str(write.path), queue))
        p.start()
        p.join()
        assert queue.get() is False
        (write.path / "manifest.json").write_text('{"status": "ok", "input_hash": "i"}')
    assert write.committed and leftovers(tmp_path) == []


# ------------------------------------------------------- concurrent writers (fault 5) --------

@pytest.fixture(scope="module")
def four_series(sample_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four copies of the embedded sample, each its own SeriesInstanceUID."""
    root = tmp_path_factory.mktemp("four-series")
    series_copies(sample_ct, root, 4)
    return root


@pytest.fixture(scope="module")
def single_run(four_series: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    r = segment(f"input={four_series}", f"output={out}", *FAST)
    assert r.returncode == 0, r.stderr
    return out


def _outcome(out: Path) -> dict[str, tuple[str, str]]:
    """case id -> (status, metrics.json text) for every case folder; index must agree."""
    cases = {c.name: (read_case(c, arrays=False).status, (c / "metrics.json").read_text())
             for c in iter_case_dirs(out)}
    index = {row["case_id"]: row["status"] for row in read_index(out)}
    assert index == {k: v[0] for k, v in cases.items()}
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("writers", [2, 4])
@pytest.mark.parametrize("sharded", [False, True], ids=["same-cases", "shards"])
def test_concurrent_writers_equal_a_single_run(four_series: Path, single_run: Path,
                                               tmp_path: Path, writers: int,
                                               sharded: bool) -> None:
    """N ``medscan segment`` processes at once on one output folder: either all on all cases
    (a rerun started twice) or as N shards (a Slurm array). Same cases, statuses and metrics
    as one run; no false failure, no temp folder left."""
    out = tmp_path / "out"
    procs = [start_segment(f"input={four_series}", f"output={out}", *FAST,
                           *([f"shard={k}", f"num_shards={writers}"] if sharded else []))
             for k in range(writers)]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and " 0 failed" in err, err
    reference = _outcome(single_run)
    assert len(reference) == 4
    assert all(status == "ok" for status, _ in reference.values())
    assert _outcome(out) == reference
    assert leftovers(out) == []


@pytest.mark.slow
def test_paused_writer_keeps_its_case(four_series: Path, single_run: Path,
                                      tmp_path: Path) -> None:
    """A writer paused (SIGSTOP) mid-case while a second run goes through the same cases: the
    second run waits for that case instead of deleting its temp folder or writing a stub."""
    out = tmp_path / "out"
    first = start_segment(f"input={four_series}", f"output={out}", *FAST)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob(".tmp-*")) and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    try:
        paused = [p.name for p in out.glob(".tmp-*")]
        second = start_segment(f"input={four_series}", f"output={out}", *FAST)
        # the second run does the other cases, then waits on the paused one's lock
        while time.time() < deadline and len(list(iter_case_dirs(out))) < 3 \
                and second.poll() is None:
            time.sleep(0.05)
        assert all((out / name).exists() for name in paused), "a live temp folder was deleted"
    finally:
        first.send_signal(signal.SIGCONT)
    _, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert _outcome(out) == _outcome(single_run)
    assert leftovers(out) == []
    if paused:  # the second run said once whom it waited for, and until when the lease runs
        waits = [line for line in (out2 + err2).splitlines()
                 if "being written by another run" in line]
        assert len(waits) == 1, out2 + err2
        assert f"host {socket.gethostname()}, pid {first.pid}" in waits[0], waits
        assert "lease runs until" in waits[0], waits


# ------------------------------------------------------------ job-level errors (fault 4) -----

@contextlib.contextmanager
def _tmpfs(path: Path, size: str, readonly: bool = False) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@contextlib.contextmanager
def _readonly_dir(path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:  # permissions bind a normal user
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with _tmpfs(path, "1m", readonly=True):
        yield path


def _fill(path: Path) -> None:
    with open(path / "filler", "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * (1 << 16))
            fh.flush()


def _one_line_exit_2(r: subprocess.CompletedProcess, path: Path, reason: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and str(path) in lines[0] and reason in lines[0], lines


def test_output_under_a_file_is_one_line_exit_2(sample_ct: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = segment(f"input={sample_ct}", f"output={blocker / 'out'}", *FAST)
    _one_line_exit_2(r, blocker / "out", "Not a directory")


def test_read_only_output_is_one_line_exit_2(sample_ct: Path, tmp_path: Path) -> None:
    with _readonly_dir(tmp_path / "ro") as ro:
        r = segment(f"input={sample_ct}", f"output={ro}", *FAST)
        _one_line_exit_2(r, ro, "Read-only file system" if os.geteuid() == 0 else "denied")
        assert list(ro.iterdir()) == []


def test_full_output_is_one_line_exit_2_before_any_work(sample_ct: Path,
                                                        tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "full", "2m") as full:
        _fill(full)
        r = segment(f"input={sample_ct}", f"output={full}", *FAST)
        _one_line_exit_2(r, full, "No space left on device")
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


def test_disk_full_mid_case_stops_the_job_without_a_stub(four_series: Path,
                                                         tmp_path: Path) -> None:
    """Room for the probe but not for a case: exit 2 naming the folder, no failed stub, no
    temp folder; a rerun with room completes the batch."""
    with _tmpfs(tmp_path / "small", "3m") as small:
        r = segment(f"input={four_series}", f"output={small}", *FAST)
        _one_line_exit_2(r, small, "No space left on device")
        assert list(iter_case_dirs(small)) == []
        assert leftovers(small) == []


# ------------------------------------------------------ hostile strings (fault 4, 7) ---------

@pytest.fixture(scope="module")
def hostile(sample_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "in"
    hostile_description(sample_ct, root)
    return root


@pytest.mark.parametrize("free_text", [False, True])
def test_hostile_description_and_file_name(hostile: Path, tmp_path: Path,
                                           free_text: bool) -> None:
    out = tmp_path / "out"
    r = segment(f"input={hostile}", f"output={out}", *FAST, f"free_text={str(free_text).lower()}")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    (case,) = iter_case_dirs(out)
    raw = (case / "manifest.json").read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    manifest = json.loads(raw)
    assert manifest["status"] == "ok"
    description = manifest["series"]["metadata"].get("SeriesDescription")
    if free_text:  # opted in: kept, with the undecodable bytes replaced
        assert description.startswith("../../etc/passwd; rm -rf ~ $(id)")
        assert "\ufffd" in description
    else:
        assert description is None and b"DOE" not in raw and b"passwd" not in raw
    # nothing in the output tree is named after the description or the file name
    hostile_names = ("passwd", "$(", "\ufffd")
    assert not [p for p in out.rglob("*") if any(bad in p.name for bad in hostile_names)]


# ----------------------------------------------------------------- privacy (fault 7) ---------

def _texts_in(out: Path) -> Iterator[tuple[str, str]]:
    """(where, text) for every file under ``out`` (gz members decompressed; binary as latin-1)
    and every file/folder name."""
    for p in sorted(out.rglob("*")):
        yield f"name {p}", p.name
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".gz":
                with gzip.open(p) as fh:
                    data = fh.read(1 << 16)  # the NIfTI header and its extensions
            yield str(p), data.decode("latin-1")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["sample", "lungdx-a0001-chest-5mm"])
def test_no_identity_in_outputs_or_logs(source: str, sample_ct: Path, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    """A real series under an archive-like tree (patient ID and name in folder names, a name
    in SeriesDescription, PatientName/ID in headers): nothing of it in the output folder.
    Run on the embedded sample and on a shared series of another patient and scanner."""
    src = sample_ct if source == "sample" else request.getfixturevalue("shared_ct") / source
    original = str(pydicom.dcmread(next(src.glob("*.dcm")), stop_before_pixels=True).PatientID)
    archive = tmp_path / "archive"
    series_dir = archive_tree(src, archive)
    out = tmp_path / "out"
    r = segment(f"input={archive}", f"output={out}", "progress=false")
    assert r.returncode == 0, r.stderr
    secrets_ = [ARCHIVE_PATIENT_ID, "MUSTERFRAU", "Musterfrau", "ERIKA", "Erika",
                "Lung_Dx", original, ARCHIVE_DESCRIPTION, str(archive), str(tmp_path)]
    hits = [(where, s) for where, text in _texts_in(out) for s in secrets_ if s in text]
    assert hits == []
    (case,) = iter_case_dirs(out)
    (dup,) = [f for f in read_case(case, arrays=False).loader_findings
              if f.code == "duplicate_instance"]
    assert len(dup.files) == 2 and all(f.startswith(("slice ", "file ")) for f in dup.files)
    assert (out / ".hydra").is_dir() and list(out.rglob("*.log"))  # the log was searched too
    inspect = subprocess.run([*MEDSCAN, "inspect", "--json", str(series_dir)],
                             capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    data = json.loads(inspect.stdout)
    body = json.dumps({k: v for k, v in data.items() if k != "root"})
    # inspect may name files relative to its root (here the file names carry the ID, as some
    # exports do); nothing from above the root, no header identity, no free text
    above = [series_dir.parent.name, series_dir.parent.parent.name, str(archive)]
    header = ["MUSTERFRAU", "Musterfrau", "ERIKA", "Erika", "Lung_Dx", ARCHIVE_DESCRIPTION]
    assert [s for s in above + header if s in body] == []
    assert "MRN-4711-0815-copy.dcm" in body  # the duplicate is reported, relative to the root
    assert data["series"][0]["n_slices"] == len(list(src.glob("*.dcm")))


# ------------------------------------------------- input vanishes mid-run (fault 4, 5) -------

def test_input_vanishing_after_discovery_fails_the_case_not_the_batch(
    sample_ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slice deleted between discovery and load (an archive being cleaned up, a flaky NFS):
    that case fails with a path-free reason and is indexed, the other case is ok, exit 1; a
    later failure of the same kind never replaces the case once it is ok."""
    import medscan.dicom as dicom
    from medscan.ct.job import run_segment
    from tests.test_segment_job import config

    tree = tmp_path / "in"
    series_copies(sample_ct, tree, 2)
    found = dicom.discover(tree)
    by_folder = {s.files[0].parent.name: s for s in found.series}
    monkeypatch.setattr(dicom, "discover", lambda *a, **k: found)
    victim = sorted((tree / "s0").glob("*.dcm"))[5]
    data = victim.read_bytes()
    victim.unlink()
    out = tmp_path / "out"
    light = {"progress": False, "preview": False, "mesh_labels": "[lung_left]",
             "mesh_formats": "[ply]"}
    assert run_segment(config(input=tree, output=out, **light)) == 1
    rows = {r["case_id"]: r for r in read_index(out)}
    bad, good = rows[by_folder["s0"].case_id], rows[by_folder["s1"].case_id]
    assert good["status"] == "ok" and bad["status"] == "failed"
    position = [Path(f) for f in by_folder["s0"].files].index(victim)
    assert f"slice {position} " in bad["reason"] and str(tree) not in bad["reason"], bad["reason"]
    # restored, the case is done; then the file vanishes again: the ok case is kept
    victim.write_bytes(data)
    assert run_segment(config(input=tree, output=out, **light)) == 0
    victim.unlink()
    assert run_segment(config(input=tree, output=out, overwrite=True, **light)) == 1
    assert {r["status"] for r in read_index(out)} == {"ok"}
    assert leftovers(out) == []


def test_file_refs_name_files_without_paths(tmp_path: Path) -> None:
    from medscan.io.redact import FileRefs

    root = tmp_path / "MRN-1_DOE"
    root.mkdir()
    files = [root / "MRN-1-01.dcm", root / os.fsdecode(b"MRN-1-\xff.dcm")]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    refs = FileRefs(files, root)
    text = refs.text(f"bad {files[0]}; {files[0].name}, MRN-1-\\xff.dcm, "
                     f"/other/MRN-1/x.dcm, {root}/gone.dcm")
    assert "MRN" not in text and "DOE" not in text and str(tmp_path) not in text, text
    assert text.count("slice 0 sha256:") == 2 and "slice 1 sha256:" in text
    assert refs.ref(tmp_path / "elsewhere.dcm") == "file (unreadable)"


def _hold_lock(out: str, case: str, ready: mp.Event, release: mp.Event) -> None:
    with case_lock(out, case):
        ready.set()
        release.wait(60)


@contextmanager
def lock_held_elsewhere(out: Path, case: str) -> Iterator[tuple[Any, Any]]:
    """Another process holds ``case``'s lock in ``out`` within the block: ``(holder, release)``
    (``release.set()`` lets it go; it is released and joined on exit in any case)."""
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), case, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        yield holder, release
    finally:
        release.set()
        holder.join(30)


def test_waiting_writer_names_the_holder_once(tmp_path: Path) -> None:
    """A blocking case_lock behind a live holder reports host/pid and the lease end once."""
    with lock_held_elsewhere(tmp_path, "ct-1") as (holder, release):
        _lease(tmp_path, "ct-1", "t1", socket.gethostname(), holder.pid,
               _start_ticks(holder.pid))
        messages: list[str] = []
        threading.Timer(1.0, release.set).start()  # the holder finishes a second later
        with case_lock(tmp_path, "ct-1", on_wait=messages.append, lease_s=60) as mine:
            assert mine
        assert len(messages) == 1, messages
        assert f"host {socket.gethostname()}, pid {holder.pid}" in messages[0]
        assert "lease runs until" in messages[0]
        with case_lock(tmp_path, "ct-1", on_wait=messages.append) as mine:  # free: no message
            assert mine
        assert len(messages) == 1
