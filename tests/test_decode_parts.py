"""Issue 15: a contained decode split over two worker processes (``run_contained_parts``).

Each worker maps the same shared buffer at its part's offset. The result must equal the
single-worker decode bit for bit (real RICORD JPEG Lossless series, the embedded sample), and
the containment guarantees of docs/reliability.md hold per part: a crash in the second part
names that part's slice in flight and kills the other worker (unless it had finished), a time
limit or an exception in one part ends both, and no shared-memory file is left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_faults import copy_slices, flip_codestream_byte

import medscan.dicom.contain as contain
from medscan.dicom import SeriesError, discover, load
from medscan.dicom.pixels import DECODER_ENV, decode_processes, split_parts

RICORD = "ricord-1a-000082-jpegll"


@pytest.fixture()
def spied(monkeypatch) -> tuple[list, list]:
    """The workers and shared files of every contained decode in the test."""
    workers, files = [], []
    take, shared = contain._take_worker, contain._shared_file

    def take_spy():
        workers.append(take())
        return workers[-1]

    def shared_spy(n):
        files.append(shared(n))
        return files[-1]

    monkeypatch.setattr(contain, "_take_worker", take_spy)
    monkeypatch.setattr(contain, "_shared_file", shared_spy)
    return workers, files


def _no_files_left(files: list) -> bool:
    return bool(files) and not any(Path(name).exists() for _, name in files)


def test_split_parts_cover_every_slice_once() -> None:
    for n in (1, 2, 7, 64, 255):
        for k in (1, 2, 3):
            parts = split_parts(n, k)
            assert len(parts) == min(n, k) and all(b > a for a, b in parts)
            assert [i for a, b in parts for i in range(a, b)] == list(range(n))


def test_two_parts_equal_one_worker_on_ricord(shared_ct: Path, spied) -> None:
    """All 255 RICORD JPEG Lossless slices: two processes give the same HU, findings and
    metadata as one; a big series with a GIL-holding decoder gets two by default."""
    workers, files = spied
    series = discover(shared_ct / RICORD).series[0]
    one = load(series, processes=1)
    two = load(series, processes=2)
    assert one.hu.dtype == two.hu.dtype and np.array_equal(one.hu, two.hu)
    np.testing.assert_array_equal(one.affine, two.affine)
    assert one.findings == two.findings
    assert one.metadata == two.metadata
    assert len({w.proc.pid for w in workers[1:]}) == 2  # the second load used two processes
    assert _no_files_left(files)


def test_two_parts_equal_in_process_on_the_sample(sample_ct: Path) -> None:
    """The embedded sample (uncompressed, 35 slices) forced through two contained workers
    equals the in-process NumPy read."""
    series = discover(sample_ct).series[0]
    two = load(series, contain=True, processes=2)
    plain = load(series, contain=False)
    assert np.array_equal(two.hu, plain.hu)


def test_default_processes() -> None:
    """Two only for a GIL-holding decoder (one thread) on a long series with two CPUs."""
    class Series:
        n_slices = 255

    assert decode_processes(Series(), 2) == 1  # threads already (libjpeg-turbo, native)
    Series.n_slices = 10
    assert decode_processes(Series(), 1) == 1
    Series.n_slices = 255
    assert decode_processes(Series(), 1) == min(2, len(contain.os.sched_getaffinity(0)))


@pytest.fixture()
def crash_in_second_part(shared_ct: Path, tmp_path: Path) -> tuple[Path, Path]:
    """12 RICORD slices (files 1-096 .. 1-107), 1-100 with liblj92's crashing byte flip; the
    stack runs from 1-107 down, so 1-100 is slice 7: in the second of two parts."""
    files = copy_slices(shared_ct / RICORD, tmp_path / "crash", 95, 107)
    victim = next(f for f in files if f.name == "1-100.dcm")
    flip_codestream_byte(victim)
    return tmp_path / "crash", victim


def test_crash_in_second_part_names_its_slice_and_kills_the_other(
        crash_in_second_part, spied, monkeypatch) -> None:
    folder, victim = crash_in_second_part
    workers, files = spied
    monkeypatch.setenv(DECODER_ENV, "liblj92")  # segfaults on the victim (test_dicom_containment)
    series = discover(folder).series[0]
    index = [h.path.name for h in series.slices].index(victim.name)
    _, second = split_parts(series.n_slices, 2)
    assert second[0] <= index < second[1], "the premise: the victim is in the second part"
    with pytest.raises(SeriesError, match=r"decoder crashed \(signal SIGSEGV\)") as info:
        load(series, workers=1, processes=2)
    message = str(info.value)
    assert victim.name in message
    others = [h.path.name for h in series.slices if h.path.name != victim.name]
    assert not any(name in message for name in others), message  # only the slice in flight
    assert len(workers) == 2
    crashed, other = sorted(workers, key=lambda w: w.proc.poll() != -11)
    assert crashed.proc.returncode == -11  # SIGSEGV
    # the first part's worker was killed while still decoding, or had finished its part and
    # went back to the pool, healthy; never left running on an abandoned request
    assert other.proc.poll() == -9 or (other in contain._idle and other.proc.poll() is None)
    assert _no_files_left(files)
    # the pool recovers: a fresh pair of workers decodes the good slices
    victim.unlink()
    good = discover(folder).series[0]
    assert np.array_equal(load(good, workers=1, processes=2).hu, load(good, contain=False).hu)


def test_time_limit_and_error_in_one_part_end_both(spied) -> None:
    workers, files = spied
    names = [Path(f"slice-{k}.dcm") for k in range(4)]
    out, pids = contain.run_contained_parts(
        contain.probe, (4, 2, 2), np.int16, names, [(0, 1, (0.0, 3)), (1, 4, (0.0, 4))])
    assert out[0].tolist() == [[3, 3], [3, 3]] and np.all(out[1:] == 4)
    assert len(set(pids)) == 2
    del workers[:]
    with pytest.raises(contain.DecoderTimeout, match="timed out after 1 s"):
        contain.run_contained_parts(contain.probe, (4, 2, 2), np.int16, names,
                                    [(0, 2, (0.0, 1)), (2, 4, (30.0, 1))], timeout_s=1.0)
    assert all(w.proc.poll() is not None for w in workers[-1:])  # the slow one killed
    del workers[:]
    with pytest.raises(OverflowError):  # 70000 does not fit int16: raised in part 1's worker
        contain.run_contained_parts(contain.probe, (4, 2, 2), np.int16, names,
                                    [(0, 2, (0.0, 70000)), (2, 4, (5.0, 1))])
    assert workers[1].proc.poll() is not None  # the other part's worker was killed
    assert _no_files_left(files)
    with pytest.raises(ValueError, match="do not fit"):
        contain.run_contained_parts(contain.probe, (4, 2, 2), np.int16, names,
                                    [(0, 2, ()), (2, 5, ())])
