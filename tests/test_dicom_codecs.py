"""Compressed transfer syntaxes decode to the same HU as the uncompressed originals.

The real sample slices are re-encoded losslessly (pydicom's encoders for RLE and JPEG 2000,
imagecodecs' libjpeg-turbo / CharLS for JPEG Lossless SV1 and JPEG-LS), written to tmp_path as
new files, and loaded with medscan.dicom.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from medscan.dicom import discover, load

N = 6  # slices per test: enough for a stack, cheap to encode


def _encapsulate(ds: pydicom.Dataset, frame: bytes, uid: pydicom.uid.UID) -> None:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid


def encode(ds: pydicom.Dataset, uid: pydicom.uid.UID) -> None:
    arr = ds.pixel_array
    if uid in (RLELossless, JPEG2000Lossless):
        ds.compress(uid)
    elif uid == JPEGLosslessSV1:
        frame = imagecodecs.jpeg8_encode(
            arr, lossless=True, predictor=1, bitspersample=int(ds.BitsStored)
        )
        _encapsulate(ds, frame, uid)
    elif uid == JPEGLSLossless:
        _encapsulate(ds, imagecodecs.jpegls_encode(arr), uid)
    elif uid == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = uid
    else:
        raise AssertionError(uid)


@pytest.fixture(scope="module")
def reference(sample_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    src = tmp_path_factory.mktemp("plain")
    for f in sorted(sample_ct.glob("*.dcm"))[:N]:
        shutil.copy2(f, src / f.name)
    assert pydicom.dcmread(next(src.glob("*.dcm"))).file_meta.TransferSyntaxUID == (
        ExplicitVRLittleEndian
    )
    return src, load(discover(src).series[0])


@pytest.mark.parametrize(
    "uid",
    [RLELossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, ImplicitVRLittleEndian],
    ids=["rle", "j2k", "jpeg-ll", "jpeg-ls", "implicit-le"],
)
def test_codec_round_trip(reference: tuple[Path, object], tmp_path: Path, uid) -> None:
    src, plain = reference
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        encode(ds, uid)
        ds.save_as(tmp_path / f.name, enforce_file_format=True)
    series = discover(tmp_path).series[0]
    assert series.transfer_syntax == uid
    vol = load(series)
    assert vol.hu.dtype == np.int16
    assert np.array_equal(vol.hu, plain.hu)
    np.testing.assert_array_equal(vol.affine, plain.affine)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_bare_dataset_without_dicm_marker(
    reference: tuple[Path, object], tmp_path: Path, implicit: bool
) -> None:
    """Files written without preamble and file meta (older scanners, some PACS exports) load
    like the originals; the text file beside them is still refused."""
    src, plain = reference
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.preamble = None
        del ds.file_meta
        pydicom.dcmwrite(
            tmp_path / f.name, ds, implicit_vr=implicit, little_endian=True,
            enforce_file_format=False,
        )
        assert (tmp_path / f.name).read_bytes()[128:132] != b"DICM"
    (tmp_path / "notes.dcm").write_text("not an image\n")
    found = discover(tmp_path)
    assert [s.path.name for s in found.skipped] == ["notes.dcm"]
    series = found.series[0]
    expected = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    assert series.transfer_syntax == expected
    vol = load(series)
    assert np.array_equal(vol.hu, plain.hu)
    np.testing.assert_array_equal(vol.affine, plain.affine)
