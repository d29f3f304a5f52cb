"""Read one DICOM file's header (no pixels) into a small, identity-free record.

A file that cannot become part of an image series is returned as a :class:`SkippedFile` with the
reason: zero-byte, DICOMDIR, not DICOM (e.g. a text file named ``.dcm``), unreadable header,
truncated pixel data (checked against the file size, without reading the pixels), or header sizes
that do not match the pixel data (Rows x Columns x SamplesPerPixel x BitsAllocated x frames vs
the PixelData length).

Whether a file has pixel data is decided from the parsed dataset and its transfer syntax
(byte order and VR of the Pixel Data element come from the syntax; a Deflated Explicit VR file
is inflated by pydicom), never from raw bytes at a fixed encoding.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medscan.dicom.identity import SecretError, patient_pseudonym
from medscan.filetree import SkippedFile, printable_path  # noqa: F401  (re-exported)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data.
PIXEL_DATA_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
                   0x7FE00009: "DoubleFloatPixelData"}
#: VRs with a 4-byte length in explicit VR encoding (PS3.5 7.1.2).
LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT",
                   b"SV", b"UV"}
#: Sequence Delimitation Item (FFFE,E0DD) with length 0, in either byte order.
SEQ_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")
DEFLATED = "1.2.840.10008.1.2.1.99"


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
    #: HighBit (0028,0102); stored values occupy bits ``high_bit - bits_stored + 1 .. high_bit``.
    high_bit: int | None = None
    #: ImageType (0008,0008) values, upper case (e.g. ``("ORIGINAL", "PRIMARY", "AXIAL")``).
    image_type: tuple[str, ...] = ()
    #: SOPClassUID (e.g. CT Image Storage, Enhanced CT Image Storage).
    sop_class: str = ""
    #: Acquisition identity (series splitting): AcquisitionNumber, AcquisitionTime,
    #: TemporalPositionIdentifier, as found (None when absent).
    acquisition_number: int | None = None
    acquisition_time: str | None = None
    temporal_position: int | None = None
    #: Reconstruction identity (series splitting): ``(keyword, value)`` of the attributes in
    #: :data:`RECONSTRUCTION_KEYWORDS` that the file carries.
    reconstruction: tuple[tuple[str, str], ...] = ()
    #: Frame index (0-based) of a multi-frame file that this record stands for, else None.
    frame: int | None = None
    #: A multi-frame file's per-frame records (see :func:`expand_frames`); empty otherwise.
    frame_headers: list[SliceHeader] = field(default_factory=list, repr=False)
    #: Why a multi-frame file's frames could not be placed (None when they could).
    frame_problem: str | None = None


#: Attributes that differ between two reconstructions of one acquisition (CT Image module,
#: PS3.3 C.8.2.1 and CT Reconstruction macro C.8.15.3.6): kernel, filter, reconstructed field of
#: view and its centre, slice thickness, algorithm. Two files differing in one of them are two
#: images of the patient that must never be interleaved into one volume.
RECONSTRUCTION_KEYWORDS = (
    "ConvolutionKernel",
    "FilterType",
    "ReconstructionDiameter",
    "ReconstructionTargetCenterPatient",
    "SliceThickness",
    "ReconstructionAlgorithm",
    "ReconstructionMethod",
)


def _reconstruction(ds: pydicom.Dataset) -> tuple[tuple[str, str], ...]:
    """``(keyword, value)`` of the :data:`RECONSTRUCTION_KEYWORDS` present in ``ds``."""
    out = []
    for keyword in RECONSTRUCTION_KEYWORDS:
        try:
            value = ds.get(keyword, None)
        except Exception:  # a malformed value is no identity, not a crash
            continue
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple, MultiValue)):
            text = "\\".join(str(v).strip() for v in value)
        else:
            text = str(value).strip()
        if text:
            out.append((keyword, text))
    return tuple(out)


def _float(
    ds: pydicom.Dataset, keyword: str, default: float | None = None, unreadable: float | None = None
) -> float | None:
    """``keyword`` as float: ``default`` when absent, ``unreadable`` when not a number."""
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return unreadable if unreadable is not None else default


def _rescale(ds: pydicom.Dataset, keyword: str, default: float) -> float:
    """RescaleSlope/Intercept: ``default`` when absent, NaN when present but not a number.

    A value that is there but unreadable is not replaced by the default (that would pass a
    corrupt header as HU); :mod:`medscan.dicom.validate` refuses the NaN with the file's name.
    """
    return _float(ds, keyword, default, unreadable=float("nan"))


def _int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _multi(ds: pydicom.Dataset, keyword: str) -> list[Any]:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _vector(ds: pydicom.Dataset, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword, None)
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


@dataclass
class PixelElement:
    """Where and how the pixel data of a file are stored (from the element header only).

    Attributes
    ----------
    present : bool
        The dataset has a Pixel Data (or float pixel data) element.
    keyword : str
        ``"PixelData"``, ``"FloatPixelData"`` or ``"DoubleFloatPixelData"``.
    length : int or None
        Value length in bytes; None for encapsulated (compressed) data.
    offset : int or None
        File offset of the value of native data in a non-deflated file (for direct reads).
    problem : str or None
        Why the file cannot be used (truncated), else None.
    first_fragment : bytes
        The first bytes (up to 64 KiB) of the first fragment of encapsulated data, else b"".
    """

    present: bool
    keyword: str = ""
    length: int | None = None
    offset: int | None = None
    problem: str | None = None
    first_fragment: bytes = b""


def _pixel_element(fp: Any, size: int, implicit: bool, little: bool) -> PixelElement:
    """Parse the element at ``fp`` (where ``stop_before_pixels`` stopped) in the dataset's encoding.

    ``implicit`` and ``little`` come from the transfer syntax the dataset was parsed with, so
    Big Endian and implicit VR files are read as correctly as explicit VR Little Endian ones.
    """
    order = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8:
        return PixelElement(False)  # end of dataset: no pixel data (e.g. a structured report)
    group, element = struct.unpack(f"{order}HH", head[:4])
    keyword = PIXEL_DATA_TAGS.get((group << 16) | element)
    if keyword is None:
        return PixelElement(False)
    if implicit:
        (length,) = struct.unpack(f"{order}I", head[4:8])
    elif head[4:6] in LONG_LENGTH_VRS:
        extra = fp.read(4)
        if len(extra) < 4:
            return PixelElement(True, keyword, None, None, "truncated: pixel data element cut off")
        (length,) = struct.unpack(f"{order}I", extra)
    else:
        (length,) = struct.unpack(f"{order}H", head[6:8])
    value_start = fp.tell()
    if length == 0xFFFFFFFF:  # encapsulated: the fragment sequence must be closed
        head = _first_fragment(fp) if little else b""
        fp.seek(max(value_start, size - 4096))
        tail = fp.read()
        if not any(d in tail for d in SEQ_DELIMITERS):
            reason = "truncated: encapsulated pixel data has no sequence delimiter (cut off)"
            return PixelElement(True, keyword, None, None, reason)
        return PixelElement(True, keyword, first_fragment=head)
    if value_start + length > size:
        return PixelElement(True, keyword, length, value_start, (
            f"truncated: pixel data needs {length} bytes but only "
            f"{max(size - value_start, 0)} are in the file"
        ))
    return PixelElement(True, keyword, length, value_start)


#: Bytes of the first fragment read at discovery (enough for any JPEG / J2K main header).
FRAGMENT_HEAD = 65536
ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian


def _first_fragment(fp: Any) -> bytes:
    """Start of the first fragment after the Basic Offset Table (PS3.5 A.4), or b""."""
    bot = fp.read(8)
    if len(bot) < 8 or bot[:4] != ITEM_TAG:
        return b""
    fp.seek(struct.unpack("<I", bot[4:8])[0], os.SEEK_CUR)
    item = fp.read(8)
    if len(item) < 8 or item[:4] != ITEM_TAG:
        return b""
    return fp.read(min(struct.unpack("<I", item[4:8])[0], FRAGMENT_HEAD))


def codestream_size(fragment: bytes) -> tuple[int, int] | None:
    """``(rows, columns)`` from the start of a JPEG, JPEG-LS or JPEG 2000 codestream, or None.

    JPEG / JPEG-LS: the SOF / SOF55 segment (ITU T.81 B.2.2, T.87), parsed by pydicom; JPEG
    2000: the SIZ segment after SOC (ITU T.800 A.5.1: Ysiz - YOsiz by Xsiz - XOsiz). RLE and
    other streams carry no size: None.
    """
    if fragment[:2] == b"\xff\xd8":
        try:
            from pydicom.pixels.utils import _get_jpg_parameters

            info = _get_jpg_parameters(fragment)
        except Exception:  # a private helper: if it changes, the check is skipped, not fatal
            return None
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"])
        return None
    at = fragment.find(b"\xff\x4f\xff\x51")  # SOC + SIZ (also inside a JP2 'jp2c' box)
    if at < 0 or len(fragment) < at + 24:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", fragment[at + 8 : at + 24])
    return ysiz - yosiz, xsiz - xosiz


def _deflated_pixel_element(path: Path) -> PixelElement:
    """Pixel data facts of a Deflated Explicit VR Little Endian file (pydicom inflates it)."""
    ds = pydicom.dcmread(path)
    for keyword in PIXEL_DATA_TAGS.values():
        if keyword in ds:
            elem = ds[keyword]
            length = None if elem.is_undefined_length else len(elem.value or b"")
            return PixelElement(True, keyword, length)
    return PixelElement(False)


def expected_pixel_bytes(rows: int, columns: int, samples: int, bits_allocated: int,
                         frames: int) -> int:
    """Bytes of native pixel data the header promises (PS3.5 8.1.1; 1-bit data are packed).

    Parameters
    ----------
    rows, columns, samples, bits_allocated, frames : int
        Rows, Columns, SamplesPerPixel, BitsAllocated, NumberOfFrames.

    Returns
    -------
    int
        ``ceil(rows * columns * samples * frames * bits_allocated / 8)``.
    """
    return (rows * columns * samples * frames * bits_allocated + 7) // 8


def _size_problem(ds: pydicom.Dataset, pixels: PixelElement) -> str | None:
    """Header sizes vs the pixel data: None when they agree or cannot be told, else why not.

    Native data: the PixelData length; encapsulated data: the size in the first frame's
    codestream (:func:`codestream_size`).
    """
    if pixels.present and pixels.length is None and pixels.first_fragment:
        found = codestream_size(pixels.first_fragment)
        rows, columns = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
        if found is not None and found != (rows, columns):
            return (
                f"header sizes do not match the pixel data: Rows {rows} x Columns {columns}, "
                f"but the compressed frame is {found[0]} x {found[1]}"
            )
        return None
    if not pixels.present or pixels.length is None or pixels.keyword != "PixelData":
        return None
    dims = {k: _int(ds, k, d) for k, d in (("Rows", 0), ("Columns", 0), ("SamplesPerPixel", 1),
                                           ("BitsAllocated", 16), ("NumberOfFrames", 1))}
    if any(v is None or v < 1 for v in dims.values()):
        bad = ", ".join(f"{k} {v}" for k, v in dims.items() if v is None or v < 1)
        return f"header sizes are not usable: {bad}"
    need = expected_pixel_bytes(*(int(v) for v in dims.values()))  # type: ignore[arg-type]
    # One byte of padding keeps an odd-length value even (PS3.5 7.1.1).
    if pixels.length in (need, need + 1):
        return None
    return (
        f"header sizes do not match the pixel data: Rows {dims['Rows']} x Columns "
        f"{dims['Columns']} x SamplesPerPixel {dims['SamplesPerPixel']} x BitsAllocated "
        f"{dims['BitsAllocated']} x {dims['NumberOfFrames']} frame(s) needs {need} bytes, "
        f"PixelData holds {pixels.length}"
    )


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
    except SecretError:  # not the file's fault: the whole job stops (one line, exit 2)
        raise
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
            if ts_uid is not None and str(ts_uid) == DEFLATED:
                pixels = _deflated_pixel_element(path)
            else:
                implicit, little = ds.original_encoding
                if implicit is None:  # nothing after the meta header was parsed
                    implicit = bool(ts_uid is not None and ts_uid.is_implicit_VR)
                    little = bool(ts_uid is None or ts_uid.is_little_endian)
                pixels = _pixel_element(fp, size, bool(implicit), bool(little))
    except InvalidDicomError:
        return SkippedFile(path, NOT_DICOM)
    except Exception as exc:
        return SkippedFile(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}")
    refused = pixels.problem or _size_problem(ds, pixels)
    if refused:
        return SkippedFile(path, refused, str(ds.get("SeriesInstanceUID", "") or ""),
                           str(ds.get("Modality", "") or "OT").upper())
    native = None
    if pixels.offset is not None and pixels.length is not None and pixels.keyword == "PixelData":
        native = (pixels.offset, pixels.length)
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
    header = SliceHeader(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", "")) or f"file:{path.resolve()}",
        series_uid=str(ds.get("SeriesInstanceUID", "")) or f"nouid:{path.parent.resolve()}",
        modality=str(ds.get("Modality", "") or "OT").upper(),
        patient_id=patient_pseudonym(ds, salt),
        transfer_syntax=str(ts_uid) if ts_uid is not None else "",
        rows=_int(ds, "Rows", 0) or 0,
        columns=_int(ds, "Columns", 0) or 0,
        frames=_int(ds, "NumberOfFrames", 1) or 1,
        has_pixels=pixels.present,
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
        bits_stored=_int(ds, "BitsStored", 16),  # 0 kept: refused by validate, not read as 16
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1) or 1,
        gantry_tilt=_float(ds, "GantryDetectorTilt"),
        slice_thickness=_float(ds, "SliceThickness"),
        meta=meta_info,
        native_pixels=native,
        high_bit=_int(ds, "HighBit"),
        image_type=tuple(str(v).strip().upper() for v in _multi(ds, "ImageType")),
        sop_class=str(ds.get("SOPClassUID", "") or ""),
        acquisition_number=_int(ds, "AcquisitionNumber"),
        acquisition_time=(str(ds.get("AcquisitionTime", "") or "").strip() or None),
        temporal_position=_int(ds, "TemporalPositionIdentifier"),
        reconstruction=_reconstruction(ds),
    )
    if header.frames > 1 and header.has_pixels:
        header.frame_headers, header.frame_problem = expand_frames(ds, header)
    return header


def _functional_group(item: Any, shared: Any, keyword: str) -> Any:
    """First item of a functional group macro: per frame, else shared (PS3.3 C.7.6.16)."""
    for source in (item, shared):
        seq = source.get(keyword, None) if source is not None else None
        if seq:
            return seq[0]
    return None


def expand_frames(ds: pydicom.Dataset, header: SliceHeader) -> tuple[list[SliceHeader], str | None]:
    """One record per frame of an enhanced multi-frame image, from its functional groups.

    Position (PlanePositionSequence), orientation (PlaneOrientationSequence), pixel spacing and
    thickness (PixelMeasuresSequence), rescale (PixelValueTransformationSequence) and acquisition
    identity (FrameContentSequence: FrameAcquisitionNumber, TemporalPositionIndex) are taken per
    frame, else from the shared groups (PS3.3 C.7.6.16). Each record is then a slice like a
    single-frame file's: grouping, ordering, QC and decoding work unchanged (written here
    because pydicom has no per-frame geometry helper and highdicom is not a dependency).

    Parameters
    ----------
    ds : pydicom.Dataset
        The parsed header (functional groups come before the pixel data).
    header : SliceHeader
        The file's record (top-level attributes).

    Returns
    -------
    frames : list of SliceHeader
        One per frame, ``frame`` = 0-based index, ``sop_uid`` = ``<SOPInstanceUID>#<n>``; empty
        when the frames cannot be placed.
    problem : str or None
        Why not (no per-frame functional groups, a frame without a position, ...).
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    shared_seq = ds.get("SharedFunctionalGroupsSequence", None)
    shared = shared_seq[0] if shared_seq else None
    if not per_frame or len(per_frame) != header.frames:
        found = len(per_frame) if per_frame else 0
        return [], (f"{header.frames} frames but {found} per-frame functional group items: "
                    "the frames cannot be placed")
    frame_bytes = expected_pixel_bytes(header.rows, header.columns, header.samples_per_pixel,
                                       header.bits_allocated, 1)
    records = []
    for k, item in enumerate(per_frame):
        position = _functional_group(item, shared, "PlanePositionSequence")
        orientation = _functional_group(item, shared, "PlaneOrientationSequence")
        measures = _functional_group(item, shared, "PixelMeasuresSequence")
        rescale = _functional_group(item, shared, "PixelValueTransformationSequence")
        content = _functional_group(item, shared, "FrameContentSequence")
        ipp = _vector(position, "ImagePositionPatient", 3) if position is not None else None
        iop = _vector(orientation, "ImageOrientationPatient", 6) if orientation else None
        if ipp is None or iop is None:
            return [], (f"frame {k + 1} has no ImagePositionPatient / ImageOrientationPatient "
                        "in its functional groups: the frames cannot be placed")
        spacing = _vector(measures, "PixelSpacing", 2) if measures is not None else None
        native = None
        if header.native_pixels is not None and header.bits_allocated % 8 == 0:
            offset, _length = header.native_pixels
            native = (offset + k * frame_bytes, frame_bytes)
        records.append(replace(
            header,
            sop_uid=f"{header.sop_uid}#{k + 1}",
            frames=1,
            frame=k,
            position=ipp,
            orientation=iop,
            pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None
            else header.pixel_spacing,
            slice_thickness=(_float(measures, "SliceThickness") if measures is not None
                             else None) or header.slice_thickness,
            slope=_rescale(rescale, "RescaleSlope", header.slope) if rescale else header.slope,
            intercept=(_rescale(rescale, "RescaleIntercept", header.intercept) if rescale
                       else header.intercept),
            instance_number=k + 1,
            acquisition_number=(_int(content, "FrameAcquisitionNumber") if content else None)
            or header.acquisition_number,
            temporal_position=(_int(content, "TemporalPositionIndex") if content else None)
            or header.temporal_position,
            native_pixels=native,
            frame_headers=[],
        ))
    return records, None
