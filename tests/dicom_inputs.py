"""Odd DICOM inputs built from a real shared series, one small deterministic generator each.

Every generator reads real slices (``src``: a folder of single-frame CT files), changes what the
case needs with pydicom, writes the result under ``dst`` and returns what the test compares
against. Randomness comes from ``numpy.random.default_rng`` with a fixed seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

#: The sample series in the shared data used by most generators (12-bit unsigned, explicit LE).
B40F = "lungdx-a0002-b40f"


def slices(src: Path, n: int | None = None) -> list[Path]:
    """The first ``n`` ``*.dcm`` files of ``src`` by name (all when ``n`` is None)."""
    files = sorted(src.glob("*.dcm"))
    return files if n is None else files[:n]


def _uid(seed: str) -> str:
    """A deterministic UID (same input, same UID: reruns make identical files)."""
    return generate_uid(entropy_srcs=[seed])


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def copy_plain(src: Path, dst: Path, n: int | None = None) -> list[Path]:
    """Byte copies of the first ``n`` slices (the reference for the altered ones)."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for f in slices(src, n):
        (dst / f.name).write_bytes(f.read_bytes())
        out.append(dst / f.name)
    return out


def deflated_series(src: Path, dst: Path, n: int = 6) -> list[Path]:
    """The slices re-written as Deflated Explicit VR Little Endian (zlib over the dataset)."""
    out = []
    for f in slices(src, n):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        out.append(_save(ds, dst / f.name))
    return out


def overlay_bits_series(src: Path, dst: Path, n: int = 6, fraction: float = 0.06) -> int:
    """Unsigned 12-bit data with bit 12 set in ``fraction`` of the voxels (an overlay plane).

    PS3.5 8.1.1: bits above HighBit are not pixel data; a reader must mask them. Returns the
    number of voxels whose bit 12 was set.
    """
    rng = np.random.default_rng(12)
    total = 0
    for f in slices(src, n):
        ds = pydicom.dcmread(f)
        assert (ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (12, 11, 0)
        arr = ds.pixel_array.astype(np.uint16)
        hit = rng.random(arr.shape) < fraction
        arr[hit] |= np.uint16(1 << 12)
        total += int(hit.sum())
        ds.PixelData = arr.tobytes()
        out = _save(ds, dst / f.name)
        assert out.stat().st_size > 0
    return total


def signed_garbage_series(src: Path, dst: Path, n: int = 6, fraction: float = 0.06) -> None:
    """Signed 12-bit data (PixelRepresentation 1) with junk in bits 12-15 of some voxels.

    The stored value is ``raw - 2048`` (so it spans the 12-bit signed range) and the intercept
    grows by 2048: the HU are unchanged. A reader must sign-extend from HighBit 11 and ignore
    what the writer left above it.
    """
    rng = np.random.default_rng(13)
    for f in slices(src, n):
        ds = pydicom.dcmread(f)
        raw = ds.pixel_array.astype(np.int32)
        stored = (raw - 2048).astype(np.int16)
        cells = stored.view(np.uint16) & np.uint16(0x0FFF)  # 12-bit two's complement
        junk = rng.integers(0, 16, raw.shape, dtype=np.uint16) << np.uint16(12)
        hit = rng.random(raw.shape) < fraction
        cells = np.where(hit, cells | junk, cells | np.where(stored < 0, 0xF000, 0))
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = str(int(float(ds.RescaleIntercept)) + 2048)
        ds.PixelData = cells.astype(np.uint16).tobytes()
        _save(ds, dst / f.name)


def _as_new_instance(ds: pydicom.Dataset, seed: str) -> None:
    ds.SOPInstanceUID = _uid(seed)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _as_other_acquisition(
    ds: pydicom.Dataset, seed: str, add: int, offset_mm: float = 0.0
) -> None:
    """Make ``ds`` a new instance of another acquisition: stored values + ``add`` (capped at
    4095, 12 bits) and ``offset_mm`` along z."""
    _as_new_instance(ds, seed)
    arr = ds.pixel_array.astype(np.uint16) + np.uint16(add)
    ds.PixelData = np.minimum(arr, 4095).astype(np.uint16).tobytes()
    if offset_mm:
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + offset_mm]


def two_acquisitions(
    src: Path, dst: Path, n: int = 8, offset_mm: float = 0.0, tag: str = "AcquisitionNumber"
) -> None:
    """Two acquisitions in one SeriesInstanceUID (contrast phases): the second is the same
    slices +100 stored units, as new instances, ``offset_mm`` along z, told apart by ``tag``.

    ``tag`` is ``"AcquisitionNumber"`` (1 and 2) or ``"TemporalPositionIdentifier"``.
    """
    for phase in (1, 2):
        for f in slices(src, n):
            ds = pydicom.dcmread(f)
            if tag == "AcquisitionNumber":
                ds.AcquisitionNumber = phase
            else:
                ds.TemporalPositionIdentifier = phase
            if phase == 2:
                _as_other_acquisition(ds, f"phase2-{f.name}", 100, offset_mm)
                ds.InstanceNumber = int(ds.InstanceNumber) + 1000
            _save(ds, dst / f"p{phase}-{f.name}")


def with_localizer(src: Path, dst: Path, n: int = 8) -> Path:
    """The slices plus one LOCALIZER image (a sagittal scout) in the same SeriesInstanceUID."""
    copy_plain(src, dst, n)
    ds = pydicom.dcmread(slices(src, 1)[0])
    _as_new_instance(ds, "localizer")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.InstanceNumber = 0
    return _save(ds, dst / "0000-scout.dcm")


def with_stray_modality(src: Path, dst: Path, n: int = 8, modality: str = "MR") -> Path:
    """The slices plus one file labelled ``modality`` with their SeriesInstanceUID, sorting
    first (issue 19 fault 3)."""
    copy_plain(src, dst, n)
    ds = pydicom.dcmread(slices(src, n)[-1])
    _as_new_instance(ds, f"stray-{modality}")
    ds.Modality = modality
    return _save(ds, dst / "0000-stray.dcm")


def lying_sizes(
    src: Path, dst: Path, n: int = 12, rows: int = 65535, columns: int = 65535,
    syntax: str | None = None,
):
    """Slices whose Rows/Columns claim ``rows`` x ``columns`` over 512 x 512 pixel data
    (compressed first with pydicom's encoder for ``syntax``, e.g. JPEG 2000 Lossless)."""
    out = []
    for f in slices(src, n):
        ds = pydicom.dcmread(f)
        if syntax is not None:
            ds.compress(syntax)
        ds.Rows, ds.Columns = rows, columns
        out.append(_save(ds, dst / f.name))
    return out


def latin1_name(src: Path, dst: Path, n: int = 6) -> Path:
    """The slices with one file renamed to the Latin-1 bytes ``scan\\xe9-19.dcm``.

    Returns the renamed file's path (its name is not valid UTF-8).
    """
    files = copy_plain(src, dst, n)
    return rename_latin1(files[-1])


def rename_latin1(path: Path) -> Path:
    """Rename ``path`` to ``scan\\xe9-19.dcm`` (a Latin-1 byte) in its folder; return it."""
    odd = Path(os.fsdecode(os.fsencode(path.parent) + b"/scan\xe9-19.dcm"))
    os.rename(path, odd)
    return odd


def unsupported_syntax(src: Path, dst: Path, n: int = 3, uid: str = "1.2.840.10008.1.2.4.100"):
    """Slices whose pixel data claim a syntax no installed decoder reads (MPEG2 by default).

    The fragments are the native bytes (not a real MPEG2 stream): a reader must refuse by the
    syntax, not try.
    """
    for f in slices(src, n):
        ds = pydicom.dcmread(f)
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
        _save(ds, dst / f.name)


def enhanced_ct(
    src: Path, dst: Path, n: int = 4, syntax: str | None = None, positions: bool = True
) -> Path:
    """An Enhanced CT object: ``n`` slices as frames of one file, geometry in functional groups.

    ``syntax`` compresses the frames with pydicom's encoder (e.g. RLE Lossless); ``positions``
    False leaves the PlanePositionSequence out (frames that cannot be placed).

    Per-frame: PlanePositionSequence, FrameContentSequence; shared: PlaneOrientationSequence,
    PixelMeasuresSequence, PixelValueTransformationSequence. The top-level
    ImagePositionPatient / ImageOrientationPatient / PixelSpacing / Rescale* are removed as the
    IOD requires (PS3.3 A.38).
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    files = slices(src, n)
    frames = [pydicom.dcmread(f) for f in files]
    frames.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    ds = frames[0].copy()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    _as_new_instance(ds, "enhanced")
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = frames[0].ImageOrientationPatient
    measures = Dataset()
    measures.PixelSpacing = frames[0].PixelSpacing
    measures.SliceThickness = frames[0].SliceThickness
    rescale = Dataset()
    rescale.RescaleSlope = frames[0].RescaleSlope
    rescale.RescaleIntercept = frames[0].RescaleIntercept
    rescale.RescaleType = "HU"
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k, fr in enumerate(frames):
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = fr.ImagePositionPatient
        content = Dataset()
        content.InStackPositionNumber = k + 1
        if positions:
            item.PlanePositionSequence = Sequence([pos])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "RescaleSlope", "RescaleIntercept", "SliceLocation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = b"".join(fr.PixelData for fr in frames)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax is not None:
        ds.compress(syntax)
    return _save(ds, dst / "enhanced.dcm")


def one_thin_slice(src: Path, dst: Path, index: int = 15, thickness_mm: float = 0.5) -> Path:
    """One slice of the series as a series of its own, ``thickness_mm`` thick (thin-slice scans
    and single test slices: the working grid must not round it to zero slices)."""
    f = slices(src)[index]
    ds = pydicom.dcmread(f)
    ds.SliceThickness = thickness_mm
    return _save(ds, dst / f.name)


def _shuffled_name(seed: str) -> str:
    """A file name that sorts by a hash of ``seed``: name order says nothing about the content."""
    return _uid(seed).rsplit(".", 1)[-1][-12:] + ".dcm"


def two_reconstructions(
    src: Path,
    dst: Path,
    n: int = 8,
    kernels: tuple[str, str] = ("B40f", "B70f"),
    thickness: tuple[str, str] | None = None,
    phases: int = 1,
) -> None:
    """One acquisition reconstructed twice under one SeriesInstanceUID (issue 11, defect 1).

    The second reconstruction (``kernels[1]``, optionally SliceThickness ``thickness[1]``) is
    the same slices +200 stored units (clipped at 4095), as new instances at the same positions
    with the same AcquisitionNumber/Time; ``phases=2`` repeats everything as AcquisitionNumber 2
    (+50 units). File names are hashes, so name order mixes the reconstructions. Each file's
    ``ImageComments`` holds ``r<recon>a<phase>-<original name>`` for the tests.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for phase in range(1, phases + 1):
        for recon in (0, 1):
            for f in slices(src, n):
                ds = pydicom.dcmread(f)
                ds.ConvolutionKernel = kernels[recon]
                if thickness is not None:
                    ds.SliceThickness = thickness[recon]
                ds.AcquisitionNumber = phase
                tag = f"r{recon}a{phase}-{f.name}"
                ds.ImageComments = tag
                if recon or phase > 1:
                    _as_other_acquisition(ds, f"recon-{tag}", 200 * recon + 50 * (phase - 1))
                _save(ds, dst / _shuffled_name(tag))


def two_timed_acquisitions(
    src: Path, dst: Path, n: int = 8, offset_mm: float = 4.0, delay_s: float = 100.0
) -> None:
    """Two helical acquisitions under one SeriesInstanceUID and AcquisitionNumber, told apart
    only by AcquisitionTime (issue 11, defect 2): per-slice times 0.2 s apart, the second
    acquisition ``delay_s`` later, ``offset_mm`` along z and +100 stored units. Names are
    hashes; ``ImageComments`` holds ``a<acq>-<original name>``.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for acq in (1, 2):
        for k, f in enumerate(slices(src, n)):
            ds = pydicom.dcmread(f)
            ds.AcquisitionNumber = 1
            secs = 12 * 3600 + (acq - 1) * delay_s + 0.2 * k
            hh, rem = divmod(secs, 3600)
            mm, ss = divmod(rem, 60)
            ds.AcquisitionTime = f"{int(hh):02d}{int(mm):02d}{ss:09.6f}"
            tag = f"a{acq}-{f.name}"
            ds.ImageComments = tag
            if acq == 2:
                _as_other_acquisition(ds, f"timed-{tag}", 100, offset_mm)
            _save(ds, dst / _shuffled_name(tag))
