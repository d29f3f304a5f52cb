"""Read one DICOM file's header (no pixels) into a small, identity-free record.

A file that cannot become part of an image series is returned as a :class:`SkippedFile` with the
reason: zero-byte, DICOMDIR, not DICOM (e.g. a text file named ``.dcm``), unreadable header, or
truncated pixel data (checked against the file size, without reading the pixels).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medscan.dicom.identity import patient_pseudonym

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) length 0


@dataclass
class SkippedFile:
    """A file that is not part of any image series.

    Parameters
    ----------
    path : Path
        The file.
    reason : str
        Why it was skipped (human readable).
    """

    path: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Return a JSON-serialisable dict."""
        return {"path": str(self.path), "reason": self.reason}


@dataclass
class SliceHeader:
    """Header facts of one image file, without patient identity.

    Positions and directions are patient LPS (mm / unit vectors); ``pixel_spacing`` is
    ``(row spacing, column spacing)`` = ``(dy, dx)`` in mm as in DICOM.
    """

    path: Path
    sop_uid: str
    series_uid: str
    modality: str
    patient_id: str  # pseudonymous
    transfer_syntax: str
    rows: int
    columns: int
    frames: int
    has_pixels: bool
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    instance_number: int | None
    slope: float
    intercept: float
    padding_value: int | None
    padding_limit: int | None
    pixel_representation: int
    bits_allocated: int
    bits_stored: int
    samples_per_pixel: int
    gantry_tilt: float | None
    slice_thickness: float | None
    meta: dict[str, Any] = field(default_factory=dict)
    #: (byte offset, length) of native (uncompressed) pixel data in the file, when known.
    native_pixels: tuple[int, int] | None = None


def _float(ds: pydicom.Dataset, keyword: str, default: float | None = None) -> float | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _rescale(ds: pydicom.Dataset, keyword: str, default: float) -> float:
    """RescaleSlope/Intercept: ``default`` when absent, NaN when present but not a number.

    A value that is there but unreadable is not replaced by the default (that would pass a
    corrupt header as HU); :mod:`medscan.dicom.validate` refuses the NaN with the file's name.
    """
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _vector(ds: pydicom.Dataset, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword, None)
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _check_pixel_data(
    fp: Any, size: int, explicit_vr: bool
) -> tuple[bool, str | None, tuple[int, int] | None]:
    """Look at the element after the header.

    Returns (has pixel data, reason if truncated, (offset, length) of a native pixel value).
    """
    head = fp.read(12)
    if len(head) < 8 or head[:4] != PIXEL_DATA_TAG:
        return False, None, None  # no pixel data (e.g. a structured report)
    if explicit_vr:
        if len(head) < 12:
            return True, "truncated: pixel data element header cut off", None
        (length,) = struct.unpack("<I", head[8:12])
        value_start = fp.tell()
    else:
        (length,) = struct.unpack("<I", head[4:8])
        value_start = fp.tell() - 4
    if length == 0xFFFFFFFF:  # encapsulated: the fragment sequence must be closed
        fp.seek(max(value_start, size - 4096))
        if SEQ_DELIMITER not in fp.read():
            reason = "truncated: encapsulated pixel data has no sequence delimiter (cut off)"
            return True, reason, None
        return True, None, None
    if value_start + length > size:
        return True, (
            f"truncated: pixel data needs {length} bytes but only "
            f"{max(size - value_start, 0)} are in the file"
        ), None
    return True, None, (value_start, length)


NOT_DICOM = "not a DICOM file (no DICM marker, not a parsable dataset)"


def _starts_like_bare_dataset(head: bytes) -> bool:
    """True when the first bytes are a little-endian group 0008 tag, as bare datasets begin.

    Checked before a forced parse so that large non-DICOM files (archives, NIfTI, video) are
    never parsed as DICOM, which could read garbage lengths.
    """
    return len(head) == 4 and head[:2] == b"\x08\x00" and head[3] == 0


def _bare_dataset_syntax(ds: pydicom.Dataset) -> UID | None:
    """Transfer syntax of a dataset read without a file meta header, or None if not an image.

    A bare dataset is uncompressed by definition; pydicom tells from its first elements whether
    it is implicit or explicit VR. The syntax is recorded in ``ds.file_meta`` so the pixel
    decoder can use it.
    """
    if "SOPInstanceUID" not in ds or "Rows" not in ds or "Columns" not in ds:
        return None
    implicit, little = ds.original_encoding
    if implicit is None or not little:
        return None
    ts_uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts_uid
    return ts_uid


def read_header(path: str | os.PathLike[str], salt: str | None = None) -> SliceHeader | SkippedFile:
    """Read the header of ``path`` (pixels are not read); never raises for a bad file.

    Parameters
    ----------
    path : str or PathLike
        A file.
    salt : str, optional
        Salt of the pseudonymous patient id (see :mod:`medscan.dicom.identity`).

    Returns
    -------
    SliceHeader or SkippedFile
        The header record, or the reason the file is skipped.
    """
    path = Path(path)
    try:
        return _read_header(path, salt)
    except Exception as exc:  # a malformed value deep in a header: skip the file, go on
        return SkippedFile(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}")


def _read_header(path: Path, salt: str | None) -> SliceHeader | SkippedFile:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return SkippedFile(path, f"cannot stat: {exc.strerror or exc}")
    if size == 0:
        return SkippedFile(path, "zero-byte file")
    if path.name.upper() == "DICOMDIR":
        return SkippedFile(path, "DICOMDIR (a media index, not an image)")
    try:
        with open(path, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
                meta = getattr(ds, "file_meta", None)
                ts_uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
            except InvalidDicomError:
                # No preamble/DICM marker: older scanners and PACS exports write bare datasets.
                # Accept one only if it parses as an image dataset (a text file does not).
                fp.seek(0)
                if not _starts_like_bare_dataset(fp.read(4)):
                    return SkippedFile(path, NOT_DICOM)
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
                ts_uid = _bare_dataset_syntax(ds)
                if ts_uid is None:
                    return SkippedFile(path, NOT_DICOM)
                meta = ds.file_meta
            explicit = True if ts_uid is None else not ts_uid.is_implicit_VR
            has_pixels, truncated, native = _check_pixel_data(fp, size, explicit)
    except InvalidDicomError:
        return SkippedFile(path, NOT_DICOM)
    except Exception as exc:
        return SkippedFile(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}")
    if truncated:
        return SkippedFile(path, truncated)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return SkippedFile(path, "DICOMDIR (a media index, not an image)")
    if "SOPInstanceUID" not in ds and "SeriesInstanceUID" not in ds:
        return SkippedFile(path, "DICOM file without SOPInstanceUID/SeriesInstanceUID")

    spacing = _vector(ds, "PixelSpacing", 2)
    if spacing is None and ds.get("PixelSpacing", None) not in (None, ""):
        # present but unreadable or not finite: refused by medscan.dicom.validate, not 1 mm
        spacing = np.array([np.nan, np.nan])
    meta_info = {
        key: str(ds.get(key))
        for key in (
            "Manufacturer",
            "ManufacturerModelName",
            "ConvolutionKernel",
            "SeriesDescription",
            "BodyPartExamined",
            "KVP",
            "SliceThickness",
            "ImageType",
            "PhotometricInterpretation",
        )
        if ds.get(key, None) not in (None, "")
    }
    return SliceHeader(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", "")) or f"file:{path.resolve()}",
        series_uid=str(ds.get("SeriesInstanceUID", "")) or f"nouid:{path.parent.resolve()}",
        modality=str(ds.get("Modality", "") or "OT").upper(),
        patient_id=patient_pseudonym(ds, salt),
        transfer_syntax=str(ts_uid) if ts_uid is not None else "",
        rows=_int(ds, "Rows", 0) or 0,
        columns=_int(ds, "Columns", 0) or 0,
        frames=_int(ds, "NumberOfFrames", 1) or 1,
        has_pixels=has_pixels,
        position=_vector(ds, "ImagePositionPatient", 3),
        orientation=_vector(ds, "ImageOrientationPatient", 6),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else None,
        instance_number=_int(ds, "InstanceNumber"),
        slope=_rescale(ds, "RescaleSlope", 1.0),
        intercept=_rescale(ds, "RescaleIntercept", 0.0),
        padding_value=_int(ds, "PixelPaddingValue"),
        padding_limit=_int(ds, "PixelPaddingRangeLimit"),
        pixel_representation=_int(ds, "PixelRepresentation", 0) or 0,
        bits_allocated=_int(ds, "BitsAllocated", 16) or 16,
        bits_stored=_int(ds, "BitsStored", 16) or 16,
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1) or 1,
        gantry_tilt=_float(ds, "GantryDetectorTilt"),
        slice_thickness=_float(ds, "SliceThickness"),
        meta=meta_info,
        native_pixels=native,
    )
