"""DICOM Segmentation (SEG) output and input: a label map as a standard DICOM object.

A DICOM SEG instance is how PACS, 3D Slicer, OHIF and TotalSegmentator's ``dicom_seg`` output
exchange segmentations. :func:`write_seg` writes one with `highdicom
<https://highdicom.readthedocs.io>`_: ``BINARY`` type, one segment per label present, each coded
with SNOMED-CT (:data:`SEGMENT_CODES`), every frame referencing the source slice it belongs to
(its SOPInstanceUID), in the source's study and frame of reference.

Geometry: the frames lie on the SOURCE slices. The label map may sit on another stack of slices
than the acquired one: ``load(..., uniform=True)`` (the segment job's default) resamples an
unevenly spaced stack to its median step along the stacking line (a ``resampled`` finding). Each
source slice then gets the labels of the nearest label-map slice along the stacking line (the
same as the nearest along the slice normal: the slices are parallel planes); two close source
slices may share one label slice. A label map on another in-plane grid, outside the source slices
or with one slice per source file but other positions (an uneven stack loaded with
``uniform=False``, whose affine uses the mean step) is refused with the reason
(:class:`SegGeometryError`), never written misplaced. A gantry-tilted stack needs nothing
special: every frame carries its own ImagePositionPatient.

Privacy: a SEG belongs to its study, so highdicom copies the source's Patient and General Study
modules (PatientName, PatientID, birth date, sex, StudyInstanceUID, accession number, ...). The
file is for the PACS the series came from, not for sharing; the segment job writes it only when
asked (``outputs=[nifti,dicom_seg]``). No path or medscan pseudonym goes into it.

:func:`read_seg` turns a SEG (medscan's or another tool's) back into a
:class:`~medscan.volume.LabelMap` in the SEG's own geometry, from its per-frame positions.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medscan.io.atomic import atomic_write

if TYPE_CHECKING:
    import pydicom

    from medscan.volume import LabelMap

#: In-plane tolerance of the check "source slice lies on the label grid", in pixels.
INPLANE_TOL_PX = 0.1
#: Slice-position tolerance (fraction of the slice step) for "same slice".
SLICE_TOL = 0.01


class SegGeometryError(ValueError):
    """The label map cannot be placed on the source slices (the message says why)."""


@dataclass(frozen=True)
class SegmentCode:
    """SNOMED-CT coding of one segment.

    Parameters
    ----------
    category : tuple of str
        ``(code value, scheme, meaning)`` from DICOM CID 7150 "Segmentation Property
        Categories".
    type : tuple of str
        ``(code value, scheme, meaning)`` from CID 7151 "Segmentation Property Types".
    modifier : tuple of str, optional
        Type modifier, e.g. laterality from CID 244 "Laterality".
    """

    category: tuple[str, str, str]
    type: tuple[str, str, str]
    modifier: tuple[str, str, str] | None = None


# SNOMED-CT concepts, as listed in pydicom's DICOM code dictionary (pydicom.sr.codedict,
# DICOM PS3.16 2024): categories from CID 7150; types from CID 7191 (tissue), 7192 (anatomical
# structure), 7193 (physical object), 7197 (body substance); laterality from CID 244.
_TISSUE = ("85756007", "SCT", "Tissue")
_ANATOMY = ("91723000", "SCT", "Anatomical Structure")
_SUBSTANCE = ("91720002", "SCT", "Body Substance")
_OBJECT = ("260787004", "SCT", "Physical object")
_LUNG = ("39607008", "SCT", "Lung")

#: medscan tissue name -> SNOMED-CT category/type (``conf/tissues/default.yaml``'s names).
SEGMENT_CODES: dict[str, SegmentCode] = {
    "air": SegmentCode(_SUBSTANCE, ("74947009", "SCT", "Gas")),
    "lung": SegmentCode(_TISSUE, _TISSUE),  # lung-density voxels OUTSIDE the segmented lungs
    "fat": SegmentCode(_TISSUE, ("55603005", "SCT", "Fat")),  # adipose tissue
    "soft_tissue": SegmentCode(_TISSUE, ("87784001", "SCT", "Soft tissue")),
    "muscle": SegmentCode(_TISSUE, ("91727004", "SCT", "Muscle")),
    "bone": SegmentCode(_TISSUE, ("3138006", "SCT", "Bone")),  # bone tissue
    "metal": SegmentCode(_OBJECT, ("40388003", "SCT", "Implant")),
    "other": SegmentCode(_TISSUE, _TISSUE),
    "lung_left": SegmentCode(_ANATOMY, _LUNG, ("7771000", "SCT", "Left")),
    "lung_right": SegmentCode(_ANATOMY, _LUNG, ("24028007", "SCT", "Right")),
    "lungs": SegmentCode(_ANATOMY, _LUNG),
}
#: Coding of a label whose name is not in :data:`SEGMENT_CODES` (a label map from another tool).
FALLBACK_CODE = SegmentCode(_TISSUE, _TISSUE)

_LABEL_VALUE = re.compile(r"medscan label (\d+)")


@dataclass(frozen=True)
class SliceMapping:
    """Which label-map slice each source slice takes its labels from.

    Parameters
    ----------
    slice_index : numpy.ndarray
        ``(n_source,)`` int, label-map slice ``k`` of each source file (in the given order).
    max_offset_mm : float
        Largest distance along the stacking line between a source slice and its label slice.
    exact : bool
        True when every source slice lies on its label slice (no resampling in between).
    """

    slice_index: np.ndarray
    max_offset_mm: float
    exact: bool


def map_source_slices(
    shape_zyx: tuple[int, int, int], affine: np.ndarray, sources: Sequence[pydicom.Dataset]
) -> SliceMapping:
    """Place each source slice on the label map's slices (nearest along the stacking line).

    Parameters
    ----------
    shape_zyx : tuple of int
        Label-map shape ``(z, y, x)``.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> LPS mm of the label map.
    sources : sequence of pydicom.Dataset
        Single-frame source images (headers: Rows, Columns, PixelSpacing,
        ImageOrientationPatient, ImagePositionPatient).

    Returns
    -------
    SliceMapping

    Raises
    ------
    SegGeometryError
        When a source slice has another in-plane grid (size, pixel spacing, orientation or
        in-plane origin), lies outside the label map's slices, or the label map has one slice per
        source file at other positions (an unevenly spaced stack loaded with ``uniform=False``).
    """
    nz, ny, nx = shape_zyx
    affine = np.asarray(affine, dtype=np.float64)
    inverse = np.linalg.inv(affine[:3, :3])
    step = float(np.linalg.norm(affine[:3, 2]))
    ks = np.empty(len(sources))
    for n, ds in enumerate(sources):
        _check_inplane(ds, n, (ny, nx), affine)
        ijk = inverse @ (np.asarray(ds.ImagePositionPatient, float) - affine[:3, 3])
        pixel = np.asarray(ds.PixelSpacing, float)  # (between rows, between columns)
        off_mm = max(abs(ijk[0]) * pixel[1], abs(ijk[1]) * pixel[0])
        if off_mm > INPLANE_TOL_PX * float(pixel.min()):
            raise SegGeometryError(
                f"source slice {n + 1} starts {off_mm:.3g} mm away from the label map's in-plane "
                "grid: the label map is not on this series' pixels"
            )
        if not -0.5 - SLICE_TOL <= ijk[2] <= nz - 0.5 + SLICE_TOL:
            raise SegGeometryError(
                f"source slice {n + 1} lies {ijk[2] * step:.1f} mm along the stacking line, "
                f"outside the label map's {nz} slices (0 .. {(nz - 1) * step:.1f} mm)"
            )
        ks[n] = ijk[2]
    index = np.clip(np.rint(ks), 0, nz - 1).astype(np.intp)
    offsets = np.abs(ks - index) * step
    exact = bool(np.all(offsets <= SLICE_TOL * step))
    if nz == len(sources) and not exact:
        raise SegGeometryError(
            f"the label map has one slice per source file ({nz}) but not at their positions (up "
            f"to {offsets.max():.2f} mm off): an unevenly spaced series loaded without "
            "uniform=True has an approximate (mean-step) affine; load it with uniform=True "
            "(the segment job's default) to write a DICOM SEG"
        )
    return SliceMapping(index, float(offsets.max()), exact)


def align_to_source(
    array: np.ndarray, affine: np.ndarray, source: pydicom.Dataset
) -> tuple[np.ndarray, np.ndarray]:
    """Transpose/flip a ``(z, y, x)`` label array so its x and y axes run like the source's.

    A label map from another tool may store the same voxels in another axis order or
    direction (dcm2niix, for one, flips the rows). Only transposes and flips are used (no
    interpolation), and the affine follows, so every voxel keeps its LPS position.

    Parameters
    ----------
    array : numpy.ndarray
        ``(z, y, x)`` labels.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> LPS mm of ``array``.
    source : pydicom.Dataset
        A source slice (ImageOrientationPatient: row direction, column direction).

    Returns
    -------
    array, affine
        A view of ``array`` whose axis 2 (x, index i) runs along the source's rows and axis 1
        (y, index j) along its columns, with its affine; the slice axis keeps its direction.
    """
    affine = np.asarray(affine, dtype=np.float64)
    iop = np.asarray(source.ImageOrientationPatient, float)
    units = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    order: list[int] = []
    signs: list[float] = []
    for direction in (iop[:3], iop[3:]):  # source row, then column direction
        dots = units.T @ direction
        dots[order] = 0.0
        axis = int(np.argmax(np.abs(dots)))
        order.append(axis)
        signs.append(float(np.sign(dots[axis]) or 1.0))
    order.append(3 - sum(order))  # the remaining index axis is the slice axis
    signs.append(1.0)
    # index axis a (i, j, k) is array axis 2 - a
    out = np.transpose(array, [2 - order[2], 2 - order[1], 2 - order[0]])
    new = np.eye(4)
    new[:3, 3] = affine[:3, 3]
    for a, (old, sign) in enumerate(zip(order, signs, strict=True)):
        new[:3, a] = affine[:3, old] * sign
        if sign < 0:
            out = np.flip(out, axis=2 - a)
            new[:3, 3] += affine[:3, old] * (array.shape[2 - old] - 1)
    return out, new


def _check_inplane(
    ds: pydicom.Dataset, n: int, shape_yx: tuple[int, int], affine: np.ndarray
) -> None:
    """Raise :class:`SegGeometryError` unless ``ds``'s pixel grid is the label map's."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    if (rows, cols) != shape_yx:
        raise SegGeometryError(
            f"source slice {n + 1} is {rows}x{cols} pixels, the label map {shape_yx[0]}x"
            f"{shape_yx[1]}: the label map is not on this series' pixels"
        )
    iop = np.asarray(ds.ImageOrientationPatient, float)
    pixel = np.asarray(ds.PixelSpacing, float)
    expected = np.column_stack([iop[:3] * pixel[1], iop[3:] * pixel[0]])
    if not np.allclose(affine[:3, :2], expected, rtol=1e-3, atol=1e-3 * float(pixel.min())):
        raise SegGeometryError(
            f"source slice {n + 1}'s pixel spacing or orientation differs from the label map's "
            "in-plane axes (resampled in-plane, or another series)"
        )


#: Type 2 attributes of the Patient and General Study modules that highdicom copies from the
#: source; de-identified series often lack some (the GE tilt series has no PatientBirthDate).
_TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "ReferringPhysicianName",
)


def _drop_broken_references(ds: pydicom.Dataset) -> None:
    """Drop Referenced Study/Patient Sequence items without their type 1 SOP UIDs.

    The sequences are optional (type 3); their items need ReferencedSOPClassUID and
    ReferencedSOPInstanceUID (type 1). Some archives write them incomplete (Lung-PET-CT-Dx
    A0001: no ReferencedSOPClassUID); highdicom copies the Patient and General Study modules
    into the SEG, which the copies would make invalid (dciodvfy: "Missing attribute for Type 1
    Required").
    """
    for key in ("ReferencedStudySequence", "ReferencedPatientSequence"):
        if key not in ds:
            continue
        items = [item for item in ds[key].value
                 if item.get("ReferencedSOPClassUID") and item.get("ReferencedSOPInstanceUID")]
        if items:
            setattr(ds, key, items)
        else:
            delattr(ds, key)


def read_sources(files: Sequence[str | Path]) -> list[pydicom.Dataset]:
    """Read the headers of the source slices and check they form one series.

    Parameters
    ----------
    files : sequence of str or Path
        Single-frame source images (e.g. ``Volume.files``).

    Returns
    -------
    list of pydicom.Dataset
        Headers without pixel data, in the given order.

    Raises
    ------
    SegGeometryError
        When no file is given, or the files span several series, studies or frames of
        reference, or a file lacks geometry.
    """
    import pydicom

    if not files:
        raise SegGeometryError("no source DICOM files: a DICOM SEG must reference its series")
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    for key in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(key, "")) for ds in datasets}
        if len(values) != 1 or "" in values:
            raise SegGeometryError(
                f"the source files must share one {key} (found {len(values)} value(s)"
                f"{', some missing' if '' in values else ''})"
            )
    for ds in datasets:
        for key in _TYPE2_PATIENT_STUDY:  # type 2: present, may be empty (PS3.3 C.7.1.1, C.7.2.1)
            if key not in ds:
                setattr(ds, key, "")
        _drop_broken_references(ds)
        if (str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
                and not ds.get("DeidentificationMethod")
                and not ds.get("DeidentificationMethodCodeSequence")):
            # type 1C then (PS3.3 C.7.1.1); the GE tilt series leaves it empty
            ds.DeidentificationMethod = "not recorded in the source series"
    for n, ds in enumerate(datasets):
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if key not in ds:
                raise SegGeometryError(f"source slice {n + 1} ({Path(files[n]).name}) has no {key}")
    return datasets


def write_seg(
    labels: LabelMap,
    source_files: Sequence[str | Path],
    path: str | Path,
    *,
    codes: Mapping[str, SegmentCode] | None = None,
    algorithm_type: str = "AUTOMATIC",
    series_description: str = "medscan segmentation",
    series_number: int = 4242,
) -> Path:
    """Atomically write ``labels`` as a DICOM SEG referencing the source series.

    Parameters
    ----------
    labels : LabelMap
        ``array`` uint8 ``(z, y, x)``, ``affine`` index -> LPS mm, ``labels`` ``{value: Label}``
        (its ``name`` chooses the SNOMED-CT code, its ``color`` the display colour).
    source_files : sequence of str or Path
        The series' single-frame DICOM files the label map was computed from (``Volume.files``).
    path : str or Path
        Output file (``seg.dcm``).
    codes : mapping, optional
        Extra or overriding ``name -> SegmentCode`` (default :data:`SEGMENT_CODES`; names in
        neither get :data:`FALLBACK_CODE`).
    algorithm_type : str
        ``"AUTOMATIC"`` (medscan's segmentation), ``"SEMIAUTOMATIC"`` or ``"MANUAL"`` (edited).
    series_description : str
        SeriesDescription of the SEG series.
    series_number : int
        SeriesNumber of the SEG series.

    Returns
    -------
    Path
        ``path``. One ``BINARY`` segment per label value present on the source slices, numbered
        1..n in increasing label value; SegmentLabel = the label name, SegmentDescription =
        ``"<name> (medscan label <value>)"``. Empty frames are omitted (highdicom's default).

    Raises
    ------
    SegGeometryError
        When the sources are not one series or the label map cannot be placed on their slices
        (:func:`map_source_slices`), or no label is present on them.
    """
    sources = read_sources(source_files)
    array, affine = align_to_source(np.asarray(labels.array), labels.affine, sources[0])
    mapping = map_source_slices(array.shape, affine, sources)
    on_sources = array[mapping.slice_index]
    values = [int(v) for v in np.unique(on_sources) if v != 0]
    if not values:
        raise SegGeometryError("the label map has no labelled voxel on the source slices")
    lut = np.zeros(256, dtype=np.uint8)
    lut[values] = np.arange(1, len(values) + 1)
    table = {**SEGMENT_CODES, **(codes or {})}
    descriptions = [
        _segment_description(n, v, labels.labels.get(v), table, algorithm_type)
        for n, v in enumerate(values, start=1)
    ]
    digest = hashlib.sha256(on_sources.tobytes())
    digest.update(repr([(v, _name(labels.labels.get(v), v)) for v in values]).encode())
    entropy = [str(sources[0].SeriesInstanceUID), digest.hexdigest()]
    with warnings.catch_warnings():
        # highdicom warns about one-component person names, quoting the name: keep it out of logs
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        seg = _segmentation(sources, lut[on_sources], descriptions, entropy, series_description,
                            series_number)
    return atomic_write(path, lambda p: seg.save_as(str(p)))


def _segmentation(
    sources: Sequence[pydicom.Dataset],
    pixel_array: np.ndarray,
    descriptions: Sequence[Any],
    entropy: list[str],
    series_description: str,
    series_number: int,
) -> Any:
    """The highdicom Segmentation object (BINARY, frames on ``sources``)."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(entropy_srcs=[*entropy, "series"]),
        series_number=series_number,
        sop_instance_uid=generate_uid(entropy_srcs=[*entropy, "instance"]),
        instance_number=1,
        manufacturer="medscan",
        manufacturer_model_name="medscan",
        software_versions=_version(),
        device_serial_number="none",
        series_description=series_description,
    )


def _version() -> str:
    """The installed medscan version (``"unknown"`` when run from a bare source tree)."""
    from importlib import metadata

    try:
        return metadata.version("medscan")
    except metadata.PackageNotFoundError:
        return "unknown"


def _name(label: Any, value: int) -> str:
    """Name of a label-table entry (``Label`` or ``{"name": ...}``), ``label_<value>`` if none."""
    if label is None:
        return f"label_{value}"
    if isinstance(label, Mapping):
        return str(label.get("name", f"label_{value}"))
    return str(label.name)


def _color(label: Any) -> tuple[int, int, int] | None:
    if label is None:
        return None
    color = label.get("color") if isinstance(label, Mapping) else getattr(label, "color", None)
    return None if color is None else tuple(int(c) for c in color)  # type: ignore[return-value]


def _segment_description(
    number: int, value: int, label: Any, table: Mapping[str, SegmentCode], algorithm_type: str
) -> Any:
    """The highdicom SegmentDescription of one label, with its SNOMED-CT codes and colour."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm_codes

    name = _name(label, value)
    code = table.get(name, FALLBACK_CODE)
    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(
            name="medscan",
            family=dcm_codes.cid7162.MorphologicalOperations,  # HU bands + morphology
            version=_version(),
        )
    color = _color(label)
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=hd.sr.CodedConcept(*code.category),
        segmented_property_type=hd.sr.CodedConcept(*code.type),
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        display_color=None if color is None else hd.color.CIELabColor.from_rgb(*color),
    )
    desc.SegmentDescription = f"{name} (medscan label {value})"[:64]
    if code.modifier is not None:
        # highdicom has no argument for it; DICOM PS3.3 C.8.20.4 nests it in the type item.
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(*code.modifier)
        ]
    return desc


#: SOP classes of DICOM Segmentation storage (PS3.4 B.5): Segmentation, Label Map Segmentation.
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")


def is_dicom_seg(path: str | Path) -> bool:
    """True when ``path`` is a DICOM file of a Segmentation SOP class (reads its header only)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    if not p.is_file():
        return False
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "Modality"])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return False
    sop = str(ds.get("SOPClassUID", "")) or str(
        getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    return sop in SEG_SOP_CLASSES or str(ds.get("Modality", "")) == "SEG"


def place_on_grid(array: np.ndarray, affine: np.ndarray, shape_zyx: tuple[int, int, int],
                  target_affine: np.ndarray) -> np.ndarray:
    """Put a label array onto a larger grid it is part of (e.g. a SEG's slices on the volume).

    A SEG covers the slices from its first to its last frame (empty frames are left out), so
    its label map can be a slab of the series' grid. No resampling: the two grids must share
    their axes and spacing, and the label array's origin must sit on a voxel of the target.

    Parameters
    ----------
    array : numpy.ndarray
        uint8 ``(z, y, x)`` labels.
    affine : numpy.ndarray
        4x4 index -> LPS of ``array``.
    shape_zyx : tuple of int
        Target grid shape.
    target_affine : numpy.ndarray
        4x4 index -> LPS of the target grid.

    Returns
    -------
    numpy.ndarray
        uint8 array of ``shape_zyx``: the labels where they lie, 0 elsewhere.

    Raises
    ------
    SegGeometryError
        Other axes or spacing, an origin between voxels, or labels outside the target grid.
    """
    affine = np.asarray(affine, float)
    target_affine = np.asarray(target_affine, float)
    if not np.allclose(affine[:3, :3], target_affine[:3, :3], atol=1e-3):
        raise SegGeometryError("the label map's axes or voxel spacing differ from the volume's "
                               "(not the same grid)")
    offset = np.linalg.solve(target_affine[:3, :3], affine[:3, 3] - target_affine[:3, 3])
    start = np.rint(offset)
    if float(np.abs(offset - start).max()) > 0.01:
        raise SegGeometryError("the label map's voxels lie between the volume's (not the same "
                               "grid)")
    i0, j0, k0 = (int(v) for v in start)
    nz, ny, nx = array.shape
    if min(i0, j0, k0) < 0 or k0 + nz > shape_zyx[0] or j0 + ny > shape_zyx[1] \
            or i0 + nx > shape_zyx[2]:
        raise SegGeometryError(f"the label map ({nz}x{ny}x{nx} from voxel ({k0}, {j0}, {i0})) "
                               f"reaches outside the volume's grid {tuple(shape_zyx)}")
    out = np.zeros(shape_zyx, np.uint8)
    out[k0:k0 + nz, j0:j0 + ny, i0:i0 + nx] = array
    return out


class SegReadError(ValueError):
    """A file is not a DICOM SEG medscan can turn into a label map (the message says why)."""


@dataclass(frozen=True)
class SegLabels:
    """A SEG decoded into a label array (what :func:`read_seg` wraps into a ``LabelMap``).

    Parameters
    ----------
    array : numpy.ndarray
        uint8 ``(z, y, x)`` label values.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> LPS mm (sheared for a tilted stack).
    table : dict
        ``{value: (name, (r, g, b))}`` of every segment.
    resampled : bool
        True when the SEG's frames were unevenly spaced and were placed on a uniform grid at
        their median step (each grid slice takes the nearest frame's labels).
    series_uid : str
        SeriesInstanceUID of the referenced source series ("" when the SEG names none).
    """

    array: np.ndarray
    affine: np.ndarray
    table: dict[int, tuple[str, tuple[int, int, int]]]
    resampled: bool
    series_uid: str


def read_seg(path: str | Path, *, uniform: bool = True, case_id: str | None = None) -> LabelMap:
    """Read a DICOM SEG into a :class:`~medscan.volume.LabelMap` in the SEG's geometry.

    Parameters
    ----------
    path : str or Path
        A DICOM Segmentation file (``BINARY``, ``FRACTIONAL`` or ``LABELMAP`` type).
    uniform : bool
        Frames at uneven steps along their stacking line (a SEG of an unevenly spaced series)
        are placed on a uniform grid at the median step, nearest frame per slice (the grid
        ``load(..., uniform=True)`` gives the source series). False: refuse such a SEG.
    case_id : str, optional
        Case id of the result (default: the file name without suffix).

    Returns
    -------
    LabelMap
        uint8 ``(z, y, x)`` over the slices from the first to the last frame position (slices
        between without frames are 0), affine from the per-frame ImagePositionPatient, the shared
        ImageOrientationPatient and PixelSpacing. Label values: medscan's own (from
        ``"(medscan label N)"`` in SegmentDescription) or else the segment numbers; names from
        SegmentLabel; colours from RecommendedDisplayCIELabValue.

    Raises
    ------
    SegReadError
        When the file is not a readable DICOM SEG, its frames are not parallel slices on one
        line, its segments overlap (a label map holds one label per voxel), or it is unevenly
        spaced and ``uniform`` is False.
    """
    from medscan.volume import Label, LabelMap

    seg = read_seg_labels(path, uniform=uniform)
    labels = {v: Label(v, name, color) for v, (name, color) in seg.table.items()}
    return LabelMap(seg.array, seg.affine, labels, case_id=case_id or Path(path).stem)


def read_seg_labels(path: str | Path, *, uniform: bool = True) -> SegLabels:
    """Decode a DICOM SEG into label values on its slices (see :func:`read_seg`)."""
    import highdicom as hd

    name = Path(path).name
    try:
        seg = hd.seg.segread(str(path))
        frames = np.asarray(seg.pixel_array)
    except Exception as exc:  # pydicom/highdicom raise many kinds on a bad file
        raise SegReadError(
            f"{name}: not a readable DICOM SEG ({type(exc).__name__}: {exc})"
        ) from exc
    if frames.ndim == 2:
        frames = frames[None]
    seg_type = str(seg.SegmentationType)
    table, values = _segment_table(seg)
    lut = np.zeros(max(values) + 1 if values else 1, dtype=np.uint8)
    for number, value in values.items():
        lut[number] = value
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = seg.get("PerFrameFunctionalGroupsSequence", [])

    def group(i: int, key: str) -> Any:
        item = per_frame[i] if i < len(per_frame) else None
        for where in (item, shared):
            if where is not None and key in where:
                return where[key].value[0]
        raise SegReadError(f"{name}: frame {i + 1} has no {key}")

    n_frames = frames.shape[0]
    orientation = np.asarray(group(0, "PlaneOrientationSequence").ImageOrientationPatient, float)
    for i in range(n_frames):
        other = np.asarray(group(i, "PlaneOrientationSequence").ImageOrientationPatient, float)
        if not np.allclose(other, orientation, atol=1e-4):
            raise SegReadError(f"{name}: frames have different orientations (not one stack)")
    pixel = np.asarray(group(0, "PixelMeasuresSequence").PixelSpacing, float)
    positions = np.array(
        [group(i, "PlanePositionSequence").ImagePositionPatient for i in range(n_frames)], float
    )
    unique, grid, affine, resampled = _slice_grid(name, positions, orientation, pixel, uniform)
    slices = np.zeros((int(unique.max()) + 1, *frames.shape[1:]), np.uint8)
    if seg_type == "LABELMAP":  # frames hold segment numbers
        if int(frames.max()) >= lut.size:
            raise SegReadError(f"{name}: a pixel names a segment that is not described")
        for i in range(n_frames):
            _paint(slices[unique[i]], lut[frames[i]], name)
    else:
        fractional = seg_type == "FRACTIONAL"
        threshold = 0.5 * float(seg.get("MaximumFractionalValue", 1)) if fractional else 0.0
        for i in range(n_frames):
            number = int(group(i, "SegmentIdentificationSequence").ReferencedSegmentNumber)
            if number not in values:
                raise SegReadError(f"{name}: frame {i + 1} names undescribed segment {number}")
            mask = frames[i] > threshold
            _paint(slices[unique[i]], np.where(mask, lut[number], 0).astype(np.uint8), name)
    out = np.zeros((len(grid), *frames.shape[1:]), np.uint8)
    out[grid >= 0] = slices[grid[grid >= 0]]
    series_uid = ""
    if seg.get("ReferencedSeriesSequence"):
        series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    return SegLabels(out, affine, table, resampled, series_uid)


def _paint(target: np.ndarray, values: np.ndarray, name: str) -> None:
    """Write the non-zero ``values`` into ``target`` (one slice), refusing overlaps."""
    new = values != 0
    clash = new & (target != 0) & (target != values)
    if np.any(clash):
        a, b = int(target[clash][0]), int(values[clash][0])
        raise SegReadError(
            f"{name}: segments of labels {a} and {b} overlap ({int(clash.sum())} pixels on one "
            "slice); a label map holds one label per voxel"
        )
    target[new] = values[new]


def _segment_table(seg: Any) -> tuple[dict[int, tuple[str, tuple[int, int, int]]], dict[int, int]]:
    """``({value: (name, rgb)}, {segment number: value})`` from the SegmentSequence."""
    table: dict[int, tuple[str, tuple[int, int, int]]] = {}
    values: dict[int, int] = {}
    # a LABELMAP SEG may describe its background as segment 0: not a label
    items = [it for it in seg.get("SegmentSequence", []) if int(it.SegmentNumber) != 0]
    medscan_values = [_LABEL_VALUE.search(str(it.get("SegmentDescription", ""))) for it in items]
    own = all(medscan_values) and len({int(m.group(1)) for m in medscan_values}) == len(items)
    for item, match in zip(items, medscan_values, strict=True):
        number = int(item.SegmentNumber)
        value = int(match.group(1)) if own else number  # type: ignore[union-attr]
        if not 0 < value < 256:
            raise SegReadError(f"segment {number}: label value {value} does not fit uint8")
        name = str(item.get("SegmentLabel", "") or f"segment_{number}")
        color: tuple[int, int, int] = (128, 128, 128)
        if "RecommendedDisplayCIELabValue" in item:
            import highdicom as hd

            lab = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue)
            color = tuple(int(c) for c in lab.to_rgb())  # type: ignore[assignment]
        values[number] = value
        table[value] = (name, color)
    if not items:
        raise SegReadError("the SEG describes no segment")
    return table, values


def _slice_grid(
    name: str, positions: np.ndarray, orientation: np.ndarray, pixel: np.ndarray, uniform: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Slices of the frames and the grid they lie on.

    Returns
    -------
    unique : numpy.ndarray
        ``(n_frames,)`` index of each frame's slice (frames of several segments share one).
    grid : numpy.ndarray
        ``(n_grid,)`` slice index feeding each grid slice, ``-1`` where no frame lies (an empty
        slice omitted by the writer).
    affine : numpy.ndarray
        4x4 index -> LPS of the grid.
    resampled : bool
        True for unevenly spaced slices put on a uniform grid (nearest slice).
    """
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    unique = np.empty(len(positions), np.intp)
    firsts: list[int] = []
    for i in order:  # positions within 0.01 mm along the normal are one slice
        if not firsts or along[i] - along[firsts[-1]] > 0.01:
            firsts.append(int(i))
        unique[i] = len(firsts) - 1
    points = positions[firsts]
    origin = points[0]
    affine = np.eye(4)
    affine[:3, 0] = row * pixel[1]
    affine[:3, 1] = col * pixel[0]
    affine[:3, 3] = origin
    if len(points) == 1:
        affine[:3, 2] = normal * float(pixel.min())
        return unique, np.zeros(1, np.intp), affine, False
    line = points[-1] - origin
    unit = line / np.linalg.norm(line)
    t = (points - origin) @ unit
    off_line = np.linalg.norm((points - origin) - np.outer(t, unit), axis=1)
    if float(off_line.max()) > INPLANE_TOL_PX * float(pixel.min()):
        raise SegReadError(
            f"{name}: frame positions are not on one line (up to {off_line.max():.2f} mm off): "
            "not a stack of slices of one grid"
        )
    steps = np.diff(t)
    base = float(steps.min())
    multiples = steps / base
    if np.all(np.abs(multiples - np.rint(multiples)) <= 2 * SLICE_TOL):  # regular, maybe gaps
        k = np.rint(t / base).astype(np.intp)
        grid = np.full(int(k[-1]) + 1, -1, np.intp)
        grid[k] = np.arange(len(points))
        affine[:3, 2] = unit * base
        return unique, grid, affine, False
    if not uniform:
        raise SegReadError(
            f"{name}: frames are unevenly spaced along their stacking line (steps "
            f"{sorted({round(float(s), 2) for s in steps})} mm); read with uniform=True to place "
            "them on a uniform grid"
        )
    # The grid of medscan.dicom.resample.regularize_stack (median step from the first slice),
    # filled with the nearest slice instead of interpolating: labels are categories.
    step = float(np.median(steps))
    n = int(np.floor(t[-1] / step + 1e-6)) + 1
    targets = np.arange(n) * step
    grid = np.abs(targets[:, None] - t[None, :]).argmin(axis=1).astype(np.intp)
    affine[:3, 2] = unit * step
    return unique, grid, affine, True
