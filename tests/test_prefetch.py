"""Issue 15: the segment job decodes the next case while the current one is analysed.

The scheduling of :class:`medscan.ct.prefetch.Prefetcher` (one volume ahead, hashes checked,
errors re-raised for their case, cancellation) is tested with plain stand-in cases; the job
with real series: a batch with prefetching on and off gives the same rows, exit code and case
files, also when a prefetched case fails to decode (RICORD JPEG Lossless slice with a corrupt
Huffman table, decoded in the contained worker), and an interrupt while a prefetched series is
being decoded leaves no thread, worker process or shared-memory file behind.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from batch_inputs import series_copy
from dicom_faults import copy_slices, ricord_crash_series

import medscan.dicom.contain as contain
from medscan.ct.prefetch import Prefetcher
from medscan.dicom import discover
from medscan.io import read_index

FAST = {"progress": False, "preview": False, "mesh_labels": "[lung_left]",
        "mesh_formats": "[ply]"}


# ------------------------------------------------------------- scheduling (no data) ---------

def _cases(*ids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(case_id=c) for c in ids]


class _Loads:
    """``load(series, cancel)`` that records calls; raises for ids in ``fail``; blocks until
    ``release`` is set (or the load is cancelled) for ids in ``block``."""

    def __init__(self, fail: set[str] = frozenset(), block: set[str] = frozenset()) -> None:
        self.calls: list[str] = []
        self.fail, self.block = fail, block
        self.release = threading.Event()
        self.cancelled: list[str] = []

    def __call__(self, series: Any, cancel: threading.Event) -> str:
        self.calls.append(series.case_id)
        if series.case_id in self.block:
            while not (self.release.is_set() or cancel.is_set()):
                time.sleep(0.01)
            if cancel.is_set():
                self.cancelled.append(series.case_id)
                raise RuntimeError("cancelled")
        if series.case_id in self.fail:
            raise ValueError(f"cannot decode {series.case_id}")
        return f"volume {series.case_id}"


def _hashes(skip: set[str] = frozenset()):
    return lambda s: None if s.case_id in skip else f"hash-{s.case_id}"


def test_next_processed_case_is_loaded_ahead_and_taken_once() -> None:
    """Cases the job would skip are passed over; the volume is handed out for its own case
    and inputs only, once; the next load ahead starts only after it was taken (bound 1)."""
    loads = _Loads()
    pre = Prefetcher(_cases("a", "b", "c", "d"), _hashes(skip={"b"}), loads)
    pre.start_after("a")
    pre.start_after("a")  # a load ahead is held: no second one
    assert pre.take(_cases("c")[0], "hash-c") == ("volume c", pytest.approx(0, abs=5))
    assert loads.calls == ["c"]
    assert pre.take(_cases("c")[0], "hash-c") is None  # taken once
    pre.start_after("c")
    assert pre.take(_cases("d")[0], "hash-d")[0] == "volume d"
    assert loads.calls == ["c", "d"]
    pre.close()


def test_changed_inputs_or_other_case_are_loaded_again() -> None:
    loads = _Loads()
    pre = Prefetcher(_cases("a", "b", "c"), _hashes(), loads)
    pre.start_after("a")
    assert pre.take(_cases("b")[0], "hash-b-changed") is None  # files changed since: reload
    pre.start_after("a")
    assert pre.take(_cases("b")[0], "") is None  # inputs unreadable under the lock
    # a load ahead of a later case is kept while an earlier one is handled
    pre = Prefetcher(_cases("a", "b", "c"), _hashes(skip={"b"}), loads)
    pre.start_after("a")
    pre._slot.decided.wait(10)
    assert pre.take(_cases("b")[0], "hash-b") is None
    pre.finished("b")
    assert pre.take(_cases("c")[0], "hash-c")[0] == "volume c"
    # finishing the case loaded ahead without taking it (it turned out current) drops it
    pre = Prefetcher(_cases("a", "b"), _hashes(), loads)
    pre.start_after("a")
    pre._slot.decided.wait(10)
    pre.finished("b")
    assert pre._slot is None and pre.take(_cases("b")[0], "hash-b") is None


def test_take_waits_for_a_choice_still_being_made() -> None:
    """The job reaches the next case while the thread still checks it (the current case
    ended early, e.g. its load failed): it waits for the choice and gets the volume."""
    def slow_hash(series):
        time.sleep(0.3)
        return f"hash-{series.case_id}"

    loads = _Loads()
    pre = Prefetcher(_cases("a", "b"), slow_hash, loads)
    pre.start_after("a")
    assert pre.take(_cases("b")[0], "hash-b")[0] == "volume b"
    assert loads.calls == ["b"]


def test_load_error_is_raised_for_its_case() -> None:
    pre = Prefetcher(_cases("a", "b", "c"), _hashes(), _Loads(fail={"b"}))
    pre.start_after("a")
    with pytest.raises(ValueError, match="cannot decode b"):
        pre.take(_cases("b")[0], "hash-b")
    pre.start_after("b")
    assert pre.take(_cases("c")[0], "hash-c")[0] == "volume c"


def test_close_cancels_a_running_load_and_disabled_does_nothing() -> None:
    loads = _Loads(block={"b"})
    pre = Prefetcher(_cases("a", "b"), _hashes(), loads)
    pre.start_after("a")
    while not loads.calls:
        time.sleep(0.01)
    thread = pre._slot.thread
    pre.close()
    assert loads.cancelled == ["b"] and not thread.is_alive()
    pre.start_after("a")  # closed: prefetching has ended
    assert pre._slot is None
    off = Prefetcher(_cases("a", "b"), _hashes(), loads, enabled=False)
    off.start_after("a")
    assert off._slot is None and off.take(_cases("b")[0], "hash-b") is None


def test_contained_decode_is_cancelled_and_its_worker_killed(monkeypatch) -> None:
    """``run_contained(cancel=...)``: DecodeCancelled soon after the event is set, the worker
    process is killed and its shared files are gone."""
    workers, files = [], []
    take, shared = contain._take_worker, contain._shared_file
    monkeypatch.setattr(contain, "_take_worker", lambda: workers.append(take()) or workers[-1])
    monkeypatch.setattr(contain, "_shared_file",
                        lambda n: files.append(shared(n)) or files[-1])
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(contain.DecodeCancelled):  # not the probe's 30 s result
        contain.run_contained(contain.probe, (3, 4, 4), np.int16, [Path("s.dcm")] * 3, 30.0,
                              cancel=cancel)
    assert workers[0].proc.poll() is not None  # killed
    assert files and not any(Path(name).exists() for _, name in files)


# -------------------------------------------------------------- the job, real series -------

@pytest.fixture(scope="module")
def batch_tree(sample_ct: Path, shared_ct: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, Path]:
    """Two copies of the embedded sample (uncompressed: decoded in-process), 20 RICORD JPEG
    Lossless slices as a new series and 6 RICORD slices whose first has a corrupt Huffman
    table (both decoded in the contained worker; the default decoder refuses the corrupt one).
    Returns the tree and the corrupt file."""
    root = tmp_path_factory.mktemp("prefetch-batch")
    tree = root / "in"
    series_copy(sample_ct, tree / "sample0", "prefetch-0")
    series_copy(sample_ct, tree / "sample1", "prefetch-1")
    cut = copy_slices(shared_ct / "ricord-1a-000082-jpegll", root / "cut", 120, 140)
    series_copy(cut[0].parent, tree / "ricord", "prefetch-ricord")
    victim = ricord_crash_series(shared_ct, tree / "corrupt")
    return tree, victim


def _salt_with_prefetched(tree: Path, folder: str) -> str:
    """A salt under which the case of ``tree/folder`` is not the first case (ids order the
    batch), so that it is one loaded ahead."""
    for k in range(50):
        salt = f"prefetch-test-salt-{k:03d}-0123456789"
        first = discover(tree, salt=salt).series[0]
        if first.files[0].parent.name != folder:
            return salt
    raise AssertionError("no salt found")


def _case_files(out: Path) -> dict[str, bytes]:
    names = ("metrics.json", "labels.nii.gz", "volume.nii.gz", "qc.json")
    return {f"{c.name}/{n}": (c / n).read_bytes()
            for c in sorted(p for p in out.iterdir() if p.name.startswith("ct-"))
            for n in names if (c / n).exists()}


def test_prefetch_on_and_off_give_the_same_batch(batch_tree, tmp_path, monkeypatch) -> None:
    """Same exit code, rows (status, reason) in the same order and byte-identical case files;
    with prefetching, every case after the first was taken from the load ahead, the corrupt
    one as its load error."""
    from medscan.ct.job import run_segment
    from tests.test_segment_job import config

    tree, _ = batch_tree
    salt = _salt_with_prefetched(tree, "corrupt")
    taken: list[tuple[str, str]] = []
    original = Prefetcher.take

    def spy(self, series, input_hash):
        try:
            got = original(self, series, input_hash)
        except Exception as exc:
            taken.append((series.case_id, type(exc).__name__))
            raise
        taken.append((series.case_id, "none" if got is None else "volume"))
        return got

    monkeypatch.setattr(Prefetcher, "take", spy)
    codes, rows, files = {}, {}, {}
    for on in (False, True):
        out = tmp_path / f"out-{on}"
        codes[on] = run_segment(config(input=tree, output=out, salt=salt, prefetch=on, **FAST))
        rows[on] = [(r["case_id"], r["status"], r["reason"]) for r in read_index(out)]
        files[on] = _case_files(out)
    assert codes == {False: 1, True: 1}
    assert rows[True] == rows[False]
    assert sorted(r[1] for r in rows[True]) == ["failed", "ok", "ok", "ok"]
    failed = next(r for r in rows[True] if r[1] == "failed")
    assert "failed to decode" in failed[2] and "Huffman" in failed[2], failed
    assert files[True].keys() == files[False].keys() and len(files[True]) >= 13
    assert files[True] == files[False]
    order = [r[0] for r in rows[True]]
    with_prefetch = taken[len(taken) - len(order):]
    corrupt = failed[0]
    assert with_prefetch[0] == (order[0], "none")  # nothing loaded ahead of the first case
    assert sorted(with_prefetch[1:]) == sorted(
        (c, "SeriesError" if c == corrupt else "volume") for c in order[1:])


@pytest.fixture(scope="module")
def two_ricord(shared_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two series of 150 RICORD JPEG Lossless slices each (new UIDs): contained decodes of
    about 1.5 s, long enough to be interrupted (the cancel event is polled every 0.2 s)."""
    root = tmp_path_factory.mktemp("prefetch-two")
    cut = copy_slices(shared_ct / "ricord-1a-000082-jpegll", root / "cut", 50, 200)
    for k in range(2):
        series_copy(cut[0].parent, root / "in" / f"r{k}", f"prefetch-two-{k}")
    return root / "in"


def test_interrupt_while_loading_ahead_leaves_nothing(two_ricord, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) in the first case's analysis while the second series is
    being decoded in the background: it propagates, the prefetch thread ends, the decoder
    worker it used is killed (SIGKILL: it was still decoding) and no shared-memory file or temp
    case folder is left."""
    import medscan.ct.job as job_module
    from medscan.ct.job import run_segment
    from tests.test_segment_job import config

    shared, take = contain._shared_file, contain._take_worker
    background_files, background_workers = [], []
    started = threading.Event()

    def in_background() -> bool:
        return threading.current_thread().name.startswith("medscan-prefetch")

    def shared_spy(n):
        got = shared(n)
        if in_background():
            background_files.append(got)
            started.set()
        return got

    def take_spy():
        worker = take()
        if in_background():
            background_workers.append(worker)
        return worker

    def interrupted(*args, **kwargs):
        started.wait(60)
        raise KeyboardInterrupt

    monkeypatch.setattr(contain, "_shared_file", shared_spy)
    monkeypatch.setattr(contain, "_take_worker", take_spy)
    monkeypatch.setattr(job_module, "analyse", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_segment(config(input=two_ricord, output=out, prefetch=True, **FAST))
    assert started.is_set(), "no contained decode ran in the background"
    assert not [t for t in threading.enumerate() if in_background()]
    assert [w.proc.returncode for w in background_workers] == [-9]
    assert not any(Path(name).exists() for _, name in background_files)
    assert not [p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]


# ------------------------------------------------- which case is loaded ahead (the job) -----

def test_lock_busy_sees_another_process_lock_and_fresh_leases(tmp_path: Path) -> None:
    """Another process's flock (read from /proc/locks, without taking the lock) or a lease
    renewed within lease_s marks a case busy; a free lock, this process's own lock (the job
    is handling the case) or an old lease does not."""
    import os

    from medscan.batch import LEASE_PREFIX, case_lock, lock_busy
    from tests.test_batch_containment import lock_held_elsewhere

    assert not lock_busy(tmp_path, "ct-1")  # no lock file yet
    with case_lock(tmp_path, "ct-1") as mine:
        assert mine and not lock_busy(tmp_path, "ct-1")  # this run's own lock: not busy
    assert not lock_busy(tmp_path, "ct-1")  # lock file there, nobody holds it
    with lock_held_elsewhere(tmp_path, "ct-1"):
        assert lock_busy(tmp_path, "ct-1") and not lock_busy(tmp_path, "ct-2")
        with case_lock(tmp_path, "ct-1", blocking=False) as mine:
            assert not mine  # the check did not take or break the holder's lock
    assert not lock_busy(tmp_path, "ct-1")
    lease = tmp_path / f"{LEASE_PREFIX}ct-1-token.json"
    lease.write_text("{}")
    assert lock_busy(tmp_path, "ct-1", lease_s=60)
    os.utime(lease, (time.time() - 120, time.time() - 120))
    assert not lock_busy(tmp_path, "ct-1", lease_s=60)


def test_current_case_is_not_loaded_ahead(sample_ct: Path, tmp_path: Path, monkeypatch):
    """A rerun where the middle case is current: it is never loaded; the third case is the one
    decoded ahead while the first computes, and taken from there."""
    import shutil

    import medscan.ct.job as job_module
    from medscan.ct.job import run_segment
    from tests.test_segment_job import config

    tree = tmp_path / "in"
    for k in range(3):
        series_copy(sample_ct, tree / f"s{k}", f"prefetch-current-{k}")
    out = tmp_path / "out"
    assert run_segment(config(input=tree, output=out, prefetch=False, **FAST)) == 0
    order = [r["case_id"] for r in read_index(out)]
    for case in (order[0], order[2]):
        shutil.rmtree(out / case)
    loads: list[tuple[str, bool]] = []
    original = job_module._Job.load

    def spy(self, series, cancel=None):
        loads.append((series.case_id, cancel is not None))
        return original(self, series, cancel)

    monkeypatch.setattr(job_module._Job, "load", spy)
    assert run_segment(config(input=tree, output=out, prefetch=True, **FAST)) == 0
    assert loads == [(order[0], False), (order[2], True)]
    rows = {r["case_id"]: r["status"] for r in read_index(out)}
    assert rows == dict.fromkeys(order, "ok")
