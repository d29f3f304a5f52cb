"""Bad input: each bad file is reported with its reason; the good series still load;
nothing is written into the input folder."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.fileset import FileSet

from medscan.dicom import SeriesError, discover, load, load_path


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def messy(sample_ct: Path, tmp_path: Path) -> Path:
    """The sample series plus every kind of junk a real folder holds."""
    root = tmp_path / "messy"
    series = root / "series"
    shutil.copytree(sample_ct, series)
    files = sorted(series.glob("*.dcm"))
    data = files[10].read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (root / "zero.dcm").write_bytes(b"")
    (root / "notes.dcm").write_text("this is a text file named .dcm\n")
    (root / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    fs = FileSet()
    ds = pydicom.dcmread(files[0])
    ds.StudyID = ds.get("StudyID") or "1"  # the default STUDY record needs one
    fs.add(ds)
    fs.write(root / "media")  # a real DICOMDIR (+ a copy of one instance)
    return root


def test_junk_is_reported_not_fatal(messy: Path, sample_ct: Path) -> None:
    before = snapshot(messy)
    found = discover(messy)
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert "truncated" in reasons["truncated.dcm"]
    assert reasons["zero.dcm"] == "zero-byte file"
    assert "not a DICOM file" in reasons["notes.dcm"]
    assert "not a DICOM file" in reasons["scan.jpg"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    (series,) = found.series
    assert series.n_slices == 30  # the DICOMDIR's copy of slice 1 is the same instance
    vol = load(series)
    assert np.array_equal(vol.hu, load_path(sample_ct).hu)
    assert snapshot(messy) == before  # nothing written into the input


def test_truncated_uncompressed_slice_in_series_is_skipped(sample_ct: Path, tmp_path: Path) -> None:
    series = tmp_path / "s"
    shutil.copytree(sample_ct, series)
    victim = series / "1-07.dcm"
    data = victim.read_bytes()
    victim.write_bytes(data[:-1000])
    found = discover(series)
    assert [s.path.name for s in found.skipped if "truncated" in s.reason] == ["1-07.dcm"]
    (s,) = found.series
    assert s.n_slices == 29
    assert "missing_slices" in {f.code for f in s.findings}


def test_cut_jpeg_stream_raises_series_error_naming_file(shared_ct: Path, tmp_path: Path) -> None:
    src = shared_ct / "ricord-1a-000082-jpegll"
    dst = tmp_path / "r"
    dst.mkdir()
    files = sorted(src.glob("*.dcm"))[100:112]
    for f in files:
        shutil.copy2(f, dst / f.name)
    victim = dst / files[5].name
    ds = pydicom.dcmread(victim)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    # JPEG stream cut short inside an intact container (decoders would return a blank bottom).
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(victim)
    found = discover(dst)
    assert not found.skipped  # the header and container are fine
    with pytest.raises(SeriesError, match=rf"{files[5].name}.*end-of-image marker"):
        load(found.series[0])


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no dicom here")
    with pytest.raises(SeriesError, match=r"no CT image series.*readme.txt"):
        load_path(tmp_path / "empty")
