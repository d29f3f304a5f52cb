"""Issue 19 faults 1 and 6: a crashing native decoder fails one series, not the batch; no lenient
fallback decoder.

The crash input is real: RICORD JPEG Lossless slice 1-100 with one byte of its Huffman table
flipped (``tests/dicom_faults.py``). imagecodecs' liblj92 segfaults on it; libjpeg-turbo and
pylibjpeg-libjpeg (conformant decoders) refuse it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_faults import copy_slices, ricord_crash_series, ricord_lenient_series
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless

from medscan.dicom import SeriesError, discover, load
from medscan.dicom.pixels import (
    DECODER_ENV,
    decode_file,
    jpeg_lossless_decoder,
    pydicom_plugin,
)
from medscan.io import iter_case_dirs, read_case, read_index

MEDSCAN = [sys.executable, "-m", "medscan.cli"]


def _decode_in_child(path: Path, decoder: str) -> int:
    """Exit status of a fresh process that decodes ``path`` with ``decoder`` (<0: signal)."""
    code = (
        "import sys; from medscan.dicom.pixels import decode_file; "
        "decode_file(sys.argv[1], sys.argv[2])"
    )
    return subprocess.run([sys.executable, "-c", code, str(path), decoder],
                          capture_output=True, timeout=120).returncode


@pytest.fixture()
def crash_series(shared_ct: Path, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "crash"
    return folder, ricord_crash_series(shared_ct, folder)


def test_crash_input_really_crashes_liblj92_and_conformant_decoders_refuse(crash_series):
    """The regression input is what it claims: a segfault for liblj92 (so containment is
    exercised for real), a clean refusal for the decoders medscan uses."""
    _, victim = crash_series
    assert _decode_in_child(victim, "liblj92") == -11  # SIGSEGV
    for decoder in ("libjpeg-turbo", "pylibjpeg-libjpeg"):
        with pytest.raises(Exception) as info:
            decode_file(victim, decoder)
        assert "Huffman" in str(info.value), (decoder, info.value)


@pytest.mark.parametrize("decoder", ["libjpeg-turbo", "pylibjpeg-libjpeg"])
def test_default_decoders_refuse_the_corrupt_slice_by_name(crash_series, monkeypatch, decoder):
    folder, victim = crash_series
    monkeypatch.setenv(DECODER_ENV, decoder)
    with pytest.raises(SeriesError, match=f"(?s)1 of 6 slice.*{victim.name}.*Huffman"):
        load(discover(folder).series[0])


def test_default_decoder_refuses_what_libjpeg_turbo_decodes_into_garbage(
    shared_ct: Path, tmp_path: Path, monkeypatch
):
    """Breaker defect 6: a corrupt Huffman code that libjpeg-turbo (imagecodecs) decodes without
    an error into wrong pixels; the default decoder must refuse it and name the slice."""
    victim = ricord_lenient_series(shared_ct, tmp_path / "lenient")
    intact = decode_file(shared_ct / "ricord-1a-000082-jpegll" / victim.name, "libjpeg-turbo")
    # the input is what it claims: libjpeg-turbo accepts it and its pixels are wrong
    garbage = decode_file(victim, "libjpeg-turbo")
    assert np.abs(garbage.astype(np.int32) - intact).max() > 1000
    with pytest.raises(Exception, match=r"(?i)huffman"):
        decode_file(victim, "pylibjpeg-libjpeg")
    monkeypatch.delenv(DECODER_ENV, raising=False)
    assert jpeg_lossless_decoder() == "pylibjpeg-libjpeg"
    with pytest.raises(SeriesError, match=f"(?s)1 of 3 slice.*{victim.name}"):
        load(discover(victim.parent).series[0])


def test_pydicom_decodes_with_one_pinned_plugin(sample_ct: Path, tmp_path: Path):
    """pydicom would try every installed plugin until one accepts a stream (pylibjpeg, then
    Pillow for JPEG 2000: the most lenient decides); medscan pins one, so only it is asked."""
    ds = pydicom.dcmread(sorted(sample_ct.glob("*.dcm"))[10])
    ds.compress(JPEG2000Lossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:120] + b"\xff\xd9"])  # cut, end marker kept
    path = tmp_path / "cut-j2k.dcm"
    ds.save_as(path)
    assert pydicom_plugin(JPEG2000Lossless) == "pylibjpeg"
    with pytest.raises(Exception) as info:
        decode_file(path)
    assert "pylibjpeg" in str(info.value)
    assert "pillow" not in str(info.value).lower()


def test_crashing_decoder_fails_the_series_and_names_the_slice(crash_series, monkeypatch):
    folder, victim = crash_series
    monkeypatch.setenv(DECODER_ENV, "liblj92")
    series = discover(folder).series[0]
    with pytest.raises(SeriesError, match="decoder crashed \\(signal SIGSEGV\\)") as info:
        load(series, workers=1)
    assert victim.name in str(info.value)
    # the worker is replaced: the next contained decode works (and equals the in-process one)
    (folder / victim.name).unlink()
    good = discover(folder).series[0]
    assert np.array_equal(load(good).hu, load(good, contain=False).hu)


def test_contained_decode_equals_in_process_decode(shared_ct: Path, tmp_path: Path):
    copy_slices(shared_ct / "ricord-1a-000082-jpegll", tmp_path, 120, 130)
    series = discover(tmp_path).series[0]
    contained, plain = load(series), load(series, contain=False)
    assert np.array_equal(contained.hu, plain.hu)
    np.testing.assert_array_equal(contained.affine, plain.affine)


@pytest.mark.parametrize("decoder", ["libjpeg-turbo", "liblj92"])
def test_batch_with_crashing_slice_goes_on(crash_series, sample_ct, tmp_path, decoder):
    """A batch of the crash series and the good sample: one failed, one ok, exit 1, the index
    records both, no temporary folder left. With liblj92 the decoder really segfaults."""
    folder, victim = crash_series
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()[:16]
    tree = tmp_path / "in"
    folder.rename(tree / "bad") if tree.exists() else (tree.mkdir(), folder.rename(tree / "bad"))
    copy_slices(sample_ct, tree / "good", 0, 30)
    out = tmp_path / "out"
    env = dict(os.environ, **{DECODER_ENV: decoder})
    r = subprocess.run([*MEDSCAN, "segment", f"input={tree}", f"output={out}", "progress=false",
                        "preview=false", "mesh_formats=[]"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    rows = {row["status"]: row for row in read_index(out)}
    assert sorted(row["status"] for row in read_index(out)) == ["failed", "ok"]
    reason = rows["failed"]["reason"]
    expected = "decoder crashed" if decoder == "liblj92" else "failed to decode"
    # outputs refer to input files by content hash (issue 19 fault 7), the terminal by name
    assert expected in reason and (digest in reason or victim.name in reason), reason
    statuses = sorted(read_case(c, arrays=False).status for c in iter_case_dirs(out))
    assert statuses == ["failed", "ok"]
    assert not [p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_worker_time_limit_and_replacement() -> None:
    """A worker past its time limit is killed (DecoderTimeout naming the slices in flight) and
    the next request gets a fresh worker that hands data back."""
    from medscan.dicom.contain import DecoderTimeout, probe, run_contained

    files = [Path(f"slice-{k}.dcm") for k in range(3)]
    with pytest.raises(DecoderTimeout, match="timed out after 1 s") as info:
        run_contained(probe, (3, 4, 4), np.int16, files, 30.0, timeout_s=1.0)
    assert info.value.files == []  # it hung before starting a slice
    out, pid = run_contained(probe, (3, 4, 4), np.int16, files, 0.0, 7)
    assert pid != os.getpid() and out.shape == (3, 4, 4) and np.all(out == 7)


def test_worker_holding_too_much_memory_is_retired(monkeypatch) -> None:
    """An idle worker above IDLE_WORKER_MAX_RSS_MIB is ended (and reaped), not kept: the next
    request runs in a fresh process; below the limit the same worker serves again."""
    from medscan.dicom import contain

    files = [Path("slice-0.dcm")]
    _, first = contain.run_contained(contain.probe, (1, 2, 2), np.int16, files, 0.0, 1)
    _, again = contain.run_contained(contain.probe, (1, 2, 2), np.int16, files, 0.0, 1)
    assert again == first  # kept: a fresh worker holds far less than the limit
    monkeypatch.setattr(contain, "IDLE_WORKER_MAX_RSS_MIB", 1.0)  # every worker is "too big"
    _, third = contain.run_contained(contain.probe, (1, 2, 2), np.int16, files, 0.0, 1)
    assert third == first  # this request was served by the kept worker, which is then retired
    assert not any(w.proc.pid == first for w in contain._idle)
    _, fourth = contain.run_contained(contain.probe, (1, 2, 2), np.int16, files, 0.0, 1)
    assert fourth != first
    deadline = time.monotonic() + 30
    while _alive(first) and time.monotonic() < deadline:  # reaped by its thread: no zombie
        time.sleep(0.05)
    assert not _alive(first)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists, zombie included (/proc/<pid> stays until it is reaped)."""
    return Path(f"/proc/{pid}").exists()
