"""Group headers into series, order slices along the normal, compute the affine and QC findings.

Geometry rules (see ``docs/dicom.md``):

* Files are grouped by SeriesInstanceUID, then partitioned per file by Modality, by whether the
  file has pixel data and by image kind (localizer / derived-secondary images are non-volume
  series): one stray file (another modality, no pixels) cannot change what the others are.
* Each partition is split where orientation, rows/columns or pixel spacing differ (the largest
  group keeps split index 0), then by acquisition (AcquisitionNumber, TemporalPositionIdentifier,
  ImageType, AcquisitionTime) when slice positions repeat or two acquisitions interleave: one
  volume never mixes two acquisitions.
* The same SOPInstanceUID met twice (copies in two folders) is loaded once.
* Slices are sorted by ``ImagePositionPatient . n`` where ``n = row x column`` direction
  (never by file name; InstanceNumber only breaks exact ties).
* Two different instances at the same position: the first (lowest InstanceNumber, then path)
  is kept, the others are reported and dropped.
* Affine columns: row direction * dx, column direction * dy, and the mean slice step vector
  ``(IPP_last - IPP_first) / (n - 1)``. For a gantry-tilted series this vector is not along the
  normal, so the affine is sheared and maps every acquired voxel to its true position
  (no resampling).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import UID

from medscan.dicom import validate
from medscan.dicom.headers import SliceHeader
from medscan.dicom.identity import case_pseudonym
from medscan.filetree import printable_path
from medscan.volume import Finding

#: A step larger than this times the median step is a gap (missing slices).
GAP_FACTOR = 1.5
#: Steps differing from the median by more than this (mm, or relative) are non-uniform.
SPACING_TOL_MM = 0.05
SPACING_TOL_REL = 0.01
#: Positions closer than this along the normal are "the same position" (mm).
SAME_POSITION_MM = 0.01
#: Direction cosines differing by more than this are another orientation (geometry split).
ORIENT_TOL = 1e-3
#: Angle between the slice step and the normal above which the series is tilted (degrees).
TILT_TOL_DEG = 0.1
#: ImageType values that mark a planning image (not part of a volume).
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM", "PILOT"}
#: SOP classes of single-frame secondary captures (never a CT volume).
SECONDARY_CAPTURE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
}
#: Enhanced (multi-frame) image storage SOP classes whose geometry lives in functional groups.
ENHANCED_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}


@dataclass
class SeriesInfo:
    """One image series (one volume) found by :func:`medscan.dicom.discover`.

    Attributes
    ----------
    case_id : str
        Pseudonymous, path-safe id, e.g. ``"ct-3f9a1c2b7e"``.
    patient_id : str
        Pseudonymous patient id shared by the series of one patient.
    modality : str
        DICOM Modality (``"CT"``, ...).
    files : list of Path
        Files in slice order (ascending along the slice normal), one per slice.
    shape : tuple of int
        ``(z, y, x)``.
    spacing : tuple of float
        ``(sz, sy, sx)`` in mm; ``sz`` is the median step along the slice normal.
    transfer_syntax : str
        Transfer syntax UID of the first file.
    findings : list of Finding
        QC findings (gaps, duplicates, tilt, spacing, rescale, geometry split...).
    affine : numpy.ndarray or None
        4x4 ``(i, j, k)`` -> LPS mm; None when the files carry no geometry.
    slices : list of SliceHeader
        Header records in slice order (for :func:`medscan.dicom.load`).
    metadata : dict
        Identity-free series facts (manufacturer, kernel, description, ...).
    """

    case_id: str
    patient_id: str
    modality: str
    files: list[Path]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    transfer_syntax: str
    findings: list[Finding] = field(default_factory=list)
    affine: np.ndarray | None = None
    slices: list[SliceHeader] = field(default_factory=list, repr=False)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        """Number of slices (files) in the volume."""
        return len(self.files)

    @property
    def transfer_syntax_name(self) -> str:
        """Readable transfer syntax name (e.g. ``"JPEG Lossless, ..."``)."""
        if not self.transfer_syntax:
            return ""
        return UID(self.transfer_syntax).name

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary, without patient identity or UIDs."""
        return {
            "case_id": self.case_id,
            "patient_id": self.patient_id,
            "modality": self.modality,
            "n_slices": self.n_slices,
            "shape": list(self.shape),
            "spacing": [round(float(s), 6) for s in self.spacing],
            "transfer_syntax": self.transfer_syntax_name,
            "transfer_syntax_uid": self.transfer_syntax,
            "affine": None if self.affine is None else np.round(self.affine, 6).tolist(),
            "metadata": dict(self.metadata),
            "findings": [f.to_dict() for f in self.findings],
            "files": [printable_path(p) for p in self.files],
        }


#: Error findings that still load (reported, not refused).
NON_BLOCKING_ERRORS = {"mixed_patients"}


def blocking_findings(series: SeriesInfo) -> list[Finding]:
    """The error findings for which :func:`medscan.dicom.load` refuses ``series``.

    Parameters
    ----------
    series : SeriesInfo

    Returns
    -------
    list of Finding
        Every ``error`` finding except :data:`NON_BLOCKING_ERRORS`; empty when it loads
        (a series without an affine is refused too, see :func:`loadable`).
    """
    return [f for f in series.findings
            if f.severity == "error" and f.code not in NON_BLOCKING_ERRORS]


def loadable(series: SeriesInfo) -> bool:
    """Whether :func:`medscan.dicom.load` (and so ``medscan segment``) accepts ``series``."""
    return not blocking_findings(series) and series.affine is not None and bool(series.slices)


def non_volume_reason(h: SliceHeader) -> str | None:
    r"""Why the image in ``h`` is not part of a CT volume (a localizer, ...), or None.

    Localizers (ImageType LOCALIZER, SCOUT, TOPOGRAM, ...), derived secondary images
    (ImageType ``DERIVED\SECONDARY`` other than axial stacks: MPRs, MIPs, screen saves) and
    Secondary Capture objects are reported as non-volume series, never loaded as cases
    (PS3.3 C.7.6.1.1.2).
    """
    image_type = "\\".join(h.image_type)
    if LOCALIZER_TYPES.intersection(h.image_type):
        return f"localizer image (ImageType {image_type})"
    # An axial DERIVED\SECONDARY stack (a thick axial reformat) is still a volume; MPRs, MIPs,
    # projections and screen saves are not.
    if h.image_type[:2] == ("DERIVED", "SECONDARY") and "AXIAL" not in h.image_type[2:]:
        return f"derived secondary image (ImageType {image_type})"
    if h.sop_class in SECONDARY_CAPTURE_CLASSES:
        return "secondary capture image (SOPClassUID Secondary Capture)"
    return None


def _same_geometry(a: SliceHeader, b: SliceHeader) -> bool:
    """Same rows/columns, and orientation and pixel spacing equal within tolerance."""
    if (a.rows, a.columns) != (b.rows, b.columns):
        return False
    if (a.orientation is None) != (b.orientation is None):
        return False
    if a.orientation is not None and np.max(np.abs(a.orientation - b.orientation)) > ORIENT_TOL:
        return False
    if (a.pixel_spacing is None) != (b.pixel_spacing is None):
        return False
    if a.pixel_spacing is not None and b.pixel_spacing is not None:
        return bool(np.allclose(a.pixel_spacing, b.pixel_spacing, rtol=1e-3, atol=1e-4,
                                   equal_nan=True))
    return True


def _geometry_groups(headers: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Split headers into groups of one geometry (tolerant: no rounding-boundary splits)."""
    groups: list[list[SliceHeader]] = []
    for h in headers:
        for group in groups:
            if _same_geometry(group[0], h):
                group.append(h)
                break
        else:
            groups.append([h])
    return sorted(groups, key=lambda g: (-len(g), str(g[0].path)))


def _partition_key(h: SliceHeader) -> tuple[str, bool, str]:
    """Per-file identity inside one SeriesInstanceUID: modality, pixels, non-volume kind."""
    return (h.modality, h.has_pixels, non_volume_reason(h) or "")


def _partitions(members: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Split one SeriesInstanceUID's files by :func:`_partition_key`, largest first."""
    parts: dict[tuple[str, bool, str], list[SliceHeader]] = defaultdict(list)
    for h in members:
        parts[_partition_key(h)].append(h)
    # The main part: image files without a non-volume kind, most files first.
    return sorted(parts.values(), key=lambda g: (
        not g[0].has_pixels, bool(non_volume_reason(g[0])), -len(g), str(g[0].path)))


def _partition_findings(part: list[SliceHeader], parts: list[list[SliceHeader]]) -> list[Finding]:
    """Tell each part of a SeriesInstanceUID which other files carried the same UID."""
    if len(parts) < 2:
        return []
    me = _partition_key(part[0])
    others = [g for g in parts if g is not part]
    desc = "; ".join(
        f"{len(g)} {g[0].modality} file(s)"
        + ("" if g[0].has_pixels else " without pixel data")
        + (f" ({non_volume_reason(g[0])})" if non_volume_reason(g[0]) else "")
        for g in others
    )
    stray = parts[0] is not part
    return [
        Finding(
            "stray_files" if stray else "mixed_series_files",
            "warning",
            (f"{len(part)} file(s) carry the SeriesInstanceUID of another series but differ "
             f"from it (modality {me[0]}" + ("" if me[1] else ", no pixel data")
             + (f", {me[2]}" if me[2] else "") + f"); reported here, not loaded with it; "
             f"the others: {desc}") if stray else (
                f"files with this SeriesInstanceUID but another modality, no pixel data or a "
                f"non-volume image type are reported separately: {desc}"),
            [str(h.path) for g in (others if not stray else [part]) for h in g],
            {"other_parts": [{"modality": g[0].modality, "has_pixels": g[0].has_pixels,
                              "kind": non_volume_reason(g[0]) or "volume", "n_files": len(g)}
                             for g in others]},
        )
    ]


#: AcquisitionTime clusters further apart than this (s) are separate acquisitions. Helical scans
#: stamp consecutive slices fractions of a second apart (a whole chest in 2-20 s); repeated
#: acquisitions (contrast phases, inspiration/expiration, a re-scan) are separated by a
#: breath-hold, injection delay or operator pause of tens of seconds. 10 s sits between the two.
ACQUISITION_TIME_GAP_S = 10.0
#: ... and also more than this many times the median time step inside the series.
ACQUISITION_TIME_GAP_FACTOR = 10.0


def _dicom_seconds(value: str | None) -> float | None:
    """Seconds since midnight of a DICOM TM value (``HHMMSS.FFFFFF``, ``HH:MM:SS`` too)."""
    if not value:
        return None
    text = value.replace(":", "").strip()
    try:
        hh = int(text[0:2])
        mm = int(text[2:4]) if len(text) >= 4 else 0
        ss = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600.0 + mm * 60.0 + ss


def _time_clusters(group: list[SliceHeader]) -> list[str | None]:
    """Label each slice with the start of its AcquisitionTime cluster (see the gap constants).

    All None when any slice lacks a readable time or the times form one cluster.
    """
    secs = [_dicom_seconds(h.acquisition_time) for h in group]
    if len(group) < 4 or any(t is None for t in secs):
        return [None] * len(group)
    t = np.array(secs, dtype=float)
    order = np.argsort(t, kind="stable")
    steps = np.diff(t[order])
    positive = steps[steps > 0]
    median = float(np.median(positive)) if positive.size else 0.0
    cut = max(ACQUISITION_TIME_GAP_S, ACQUISITION_TIME_GAP_FACTOR * median)
    labels: list[str | None] = [None] * len(group)
    start = group[int(order[0])].acquisition_time
    for rank, i in enumerate(order):
        if rank and steps[rank - 1] > cut:
            start = group[int(i)].acquisition_time
        labels[int(i)] = f"AcquisitionTime from {start}"
    return labels if len(set(labels)) > 1 else [None] * len(group)


def _reconstruction_label(group: list[SliceHeader]) -> list[str | None]:
    """Per slice: the reconstruction attributes that vary in ``group``, as ``key=value``."""
    dicts = [dict(h.reconstruction) for h in group]
    keys = sorted({k for d in dicts for k in d})
    varying = [k for k in keys if len({d.get(k) for d in dicts}) > 1]
    if not varying:
        return [None] * len(group)
    return [", ".join(f"{k}={d.get(k, '-')}" for k in varying) for d in dicts]


def _acquisition_keys(group: list[SliceHeader]) -> list[tuple[str, list[Any]]]:
    """Per-slice header facts that tell acquisitions or reconstructions apart, in trial order."""
    return [
        ("AcquisitionNumber", [h.acquisition_number for h in group]),
        ("TemporalPositionIdentifier", [h.temporal_position for h in group]),
        ("reconstruction", _reconstruction_label(group)),
        ("ImageType", ["\\".join(h.image_type) or None for h in group]),
        ("AcquisitionTime", [h.acquisition_time for h in group]),
        ("AcquisitionTime cluster", _time_clusters(group)),
    ]


def _projections(group: list[SliceHeader]) -> np.ndarray | None:
    first = group[0]
    if first.orientation is None or any(h.position is None for h in group):
        return None
    normal = _normal(first.orientation)
    return np.array([float(h.position @ normal) for h in group])  # type: ignore[operator]


def _has_repeats(proj: np.ndarray) -> bool:
    p = np.sort(proj)
    return bool(p.size > 1 and np.min(np.diff(p)) < SAME_POSITION_MM)


def _interleave(parts: list[np.ndarray]) -> bool:
    """True when a slice of one part lies strictly inside the position range of another.

    Parts of a single slice (scanners that number each slice as its own acquisition) and parts
    that follow each other along the table (step-and-shoot blocks) do not interleave.
    """
    for i, a in enumerate(parts):
        if a.size < 2:
            continue
        lo, hi = float(a.min()) + SAME_POSITION_MM, float(a.max()) - SAME_POSITION_MM
        for j, b in enumerate(parts):
            if i != j and b.size >= 2 and bool(np.any((b > lo) & (b < hi))):
                return True
    return False


def split_acquisitions(
    group: list[SliceHeader], _depth: int = 0,
) -> tuple[str | None, list[tuple[Any, list[SliceHeader]]]]:
    """Split one geometry group into acquisitions when positions repeat or interleave.

    Tried in turn: AcquisitionNumber, TemporalPositionIdentifier, the reconstruction
    attributes (:data:`medscan.dicom.headers.RECONSTRUCTION_KEYWORDS`: ConvolutionKernel,
    SliceThickness, ReconstructionDiameter, FilterType...), ImageType, AcquisitionTime, and
    AcquisitionTime clusters (:data:`ACQUISITION_TIME_GAP_S`). The first attribute whose values
    remove the repeats or whose parts interleave splits the group; each part is then split
    again the same way (two contrast phases, each reconstructed with two kernels, give four
    volumes). The result never depends on file names.

    Parameters
    ----------
    group : list of SliceHeader
        Files of one SeriesInstanceUID, modality and geometry.

    Returns
    -------
    key : str or None
        The attribute(s) that separated the parts (e.g. ``"AcquisitionNumber"``,
        ``"AcquisitionNumber + reconstruction"``), or None when the group is one volume.
    parts : list of (value, list of SliceHeader)
        One entry per part (the whole group when ``key`` is None), sorted by value.
    """
    proj = _projections(group)
    if proj is None or len(group) < 2:
        return None, [(None, group)]
    repeats = _has_repeats(proj)
    for name, labels in _acquisition_keys(group):
        values: dict[Any, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            values[label].append(i)
        if len(values) < 2:
            continue
        parts = [proj[idx] for idx in values.values()]
        if name == "AcquisitionTime" and min(len(v) for v in values.values()) < 2:
            continue  # helical scans stamp each slice with its own time: not an acquisition id
        resolves = repeats and not any(_has_repeats(p) for p in parts)
        if resolves or _interleave(parts):
            ordered = sorted(values.items(), key=lambda kv: str(kv[0]))
            out: list[tuple[Any, list[SliceHeader]]] = []
            sub_keys: set[str] = set()
            for v, idx in ordered:
                sub = [group[i] for i in idx]
                sub_key, sub_parts = split_acquisitions(sub, _depth + 1) if _depth < 3 else (
                    None, [(None, sub)])
                if sub_key is None:
                    out.append((v, sub))
                    continue
                sub_keys.add(sub_key)
                out += [(f"{v} / {sv}", sp) for sv, sp in sub_parts]
            key = " + ".join([name, *sorted(sub_keys)])
            return key, out
    return None, [(None, group)]


def group_series(
    headers: list[SliceHeader], salt: str | None = None
) -> list[SeriesInfo]:
    """Group header records into :class:`SeriesInfo` (all modalities).

    Parameters
    ----------
    headers : list of SliceHeader
        Records of readable DICOM files.
    salt : str, optional
        Salt of the pseudonymous case id.

    Returns
    -------
    list of SeriesInfo
        Sorted by case id.
    """
    by_uid: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        by_uid[h.series_uid].append(h)
    out: list[SeriesInfo] = []
    for uid, members in by_uid.items():
        members.sort(key=lambda h: str(h.path))
        unique, dup_findings = _dedupe_instances(members)
        parts = _partitions(unique)
        for p_index, part in enumerate(parts):
            # The main part keeps the plain SeriesInstanceUID (stable case ids); the others get
            # their own ids from the part's identity.
            key = _partition_key(part[0])
            part_uid = uid if p_index == 0 else f"{uid}|{key[0]}|{int(key[1])}|{key[2]}"
            part_findings = _partition_findings(part, parts)
            ordered = _geometry_groups(part)
            for split, group in enumerate(ordered):
                acq_key, acquisitions = split_acquisitions(group)
                for acq_value, acq_group in acquisitions:
                    acq_uid = part_uid if acq_key is None else f"{part_uid}|acq={acq_value}"
                    info = build_series(acq_group, acq_uid, split, salt)
                    mine = {str(h.path) for h in acq_group}
                    info.findings[:0] = [f for f in dup_findings if set(f.files) & mine]
                    info.findings[:0] = part_findings
                    if acq_key is not None:
                        info.findings.append(_acquisition_finding(
                            acq_key, acq_value, [v for v, _ in acquisitions], acq_group))
                    if len(ordered) > 1:
                        info.findings.append(_geometry_finding(ordered, split, group))
                    out.append(info)
    out.sort(key=lambda s: s.case_id)
    return out


def _acquisition_finding(
    key: str, value: Any, values: list[Any], group: list[SliceHeader]
) -> Finding:
    return Finding(
        "acquisition_split",
        "warning",
        f"one SeriesInstanceUID holds {len(values)} acquisitions or reconstructions ({key}: "
        f"{'; '.join(str(v) for v in values)}) whose slice positions repeat or interleave; "
        f"split into {len(values)} volumes, this is {value} ({len(group)} files)",
        [str(h.path) for h in group],
        {"key": key, "value": None if value is None else str(value),
         "values": [None if v is None else str(v) for v in values]},
    )


def _geometry_text(h: SliceHeader, ref: SliceHeader) -> str:
    """How the geometry of ``h`` differs from ``ref`` (rows/columns, spacing, orientation)."""
    parts = []
    if (h.rows, h.columns) != (ref.rows, ref.columns):
        parts.append(f"{h.rows}x{h.columns} px (vs {ref.rows}x{ref.columns})")
    if h.pixel_spacing != ref.pixel_spacing and not (
        h.pixel_spacing is not None and ref.pixel_spacing is not None
        and np.allclose(h.pixel_spacing, ref.pixel_spacing, rtol=1e-3, atol=1e-4)
    ):
        def fmt(ps: tuple[float, float] | None) -> str:
            return "none" if ps is None else f"{ps[0]:.4g}x{ps[1]:.4g} mm"
        parts.append(f"PixelSpacing {fmt(h.pixel_spacing)} (vs {fmt(ref.pixel_spacing)})")
    if h.orientation is not None and ref.orientation is not None:
        diff = float(np.max(np.abs(h.orientation - ref.orientation)))
        if diff > ORIENT_TOL:
            cos = float(np.clip(_normal(h.orientation) @ _normal(ref.orientation), -1, 1))
            parts.append(f"ImageOrientationPatient {np.round(h.orientation, 4).tolist()} "
                         f"(normal {np.degrees(np.arccos(cos)):.1f} deg from the main part's)")
    elif (h.orientation is None) != (ref.orientation is None):
        parts.append("ImageOrientationPatient " + ("missing" if h.orientation is None
                                                   else "present where the main part has none"))
    return ", ".join(parts) or "same geometry"


def _geometry_finding(
    ordered: list[list[SliceHeader]], split: int, group: list[SliceHeader]
) -> Finding:
    ref = ordered[0][0]
    first = ordered[0]
    spacing = (f", PixelSpacing {ref.pixel_spacing[0]:.4g}x{ref.pixel_spacing[1]:.4g} mm"
               if ref.pixel_spacing is not None else "")
    others = "; ".join(f"part {i}: {len(g)} file(s), {_geometry_text(g[0], ref)}"
                       for i, g in enumerate(ordered) if i > 0)
    return Finding(
        "geometry_split",
        "warning",
        f"one SeriesInstanceUID holds files of different geometry: part 0 (main): "
        f"{len(first)} file(s) {ref.rows}x{ref.columns} px{spacing}; {others}; split into "
        f"{len(ordered)} volumes, this is part {split} ({len(group)} files"
        + (f": {_geometry_text(group[0], ref)})" if split else ")"),
        [str(h.path) for h in group],
        {
            "n_parts": len(ordered),
            "part": split,
            "rows": group[0].rows,
            "columns": group[0].columns,
            "differs": [_geometry_text(g[0], ref) for g in ordered[1:]],
        },
    )


def _dedupe_instances(
    members: list[SliceHeader],
) -> tuple[list[SliceHeader], list[Finding]]:
    """Keep one file per SOPInstanceUID; report the copies."""
    seen: dict[str, SliceHeader] = {}
    copies: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in members:
        if h.sop_uid in seen:
            copies[h.sop_uid].append(h)
        else:
            seen[h.sop_uid] = h
    findings = []
    if copies:
        n = sum(len(v) for v in copies.values())
        files = []
        for uid, extra in copies.items():
            files += [str(seen[uid].path)] + [str(h.path) for h in extra]
        findings.append(
            Finding(
                "duplicate_instance",
                "info",
                f"{n} file(s) are copies of an instance already found (same SOPInstanceUID); "
                "each instance is loaded once",
                files,
                {"n_copies": n},
            )
        )
    return list(seen.values()), findings


def _layout_refusal(group: list[SliceHeader]) -> Finding | None:
    """The one reason a pixel layout is not loaded as a CT volume, or None.

    Non-volume images (localizers, derived secondary, secondary capture) are reported as
    ``non_volume``; enhanced multi-frame objects and colour images are ``unsupported_layout``.
    """
    first = group[0]
    files = [str(h.path) for h in group]
    reason = non_volume_reason(first)
    if reason:
        return Finding("non_volume", "info", f"{reason}: not a volume, reported and not loaded",
                       files, {"image_type": list(first.image_type)})
    if first.frames > 1:  # frames that expand_frames could not place
        what = ENHANCED_CLASSES.get(first.sop_class, "multi-frame image")
        why = first.frame_problem or "no per-frame functional groups"
        return Finding(
            "unsupported_layout", "error",
            f"{what} ({first.frames} frames in {len(group)} file(s)): {why}",
            files, {"frames": first.frames, "sop_class": first.sop_class})
    if first.samples_per_pixel != 1:
        return Finding(
            "unsupported_layout", "error",
            f"colour images ({first.samples_per_pixel} samples per pixel) are not CT volumes",
            files, {"samples_per_pixel": first.samples_per_pixel})
    return None


def _normal(orientation: np.ndarray) -> np.ndarray:
    row, col = orientation[:3], orientation[3:]
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def build_series(
    group: list[SliceHeader], series_uid: str, split: int, salt: str | None = None
) -> SeriesInfo:
    """Order one geometry group along its normal and compute the affine and QC findings.

    Parameters
    ----------
    group : list of SliceHeader
        Files of one SeriesInstanceUID with one geometry, one instance each.
    series_uid : str
        SeriesInstanceUID.
    split : int
        Geometry-split index.
    salt : str, optional
        Salt of the case id.

    Returns
    -------
    SeriesInfo
    """
    first = group[0]
    modality = first.modality
    case_id = case_pseudonym(modality, series_uid, split, salt)
    findings: list[Finding] = []
    metadata = dict(first.meta)
    metadata["modality"] = modality
    patients = sorted({h.patient_id for h in group})
    if len(patients) > 1:
        findings.append(
            Finding(
                "mixed_patients",
                "error",
                f"one series holds files of {len(patients)} different patients",
                [str(h.path) for h in group],
                {"patient_ids": patients},
            )
        )
    ps = first.pixel_spacing
    dy, dx = ps if ps is not None else (1.0, 1.0)
    info = SeriesInfo(
        case_id=case_id,
        patient_id=patients[0],
        modality=modality,
        files=[],
        shape=(0, first.rows, first.columns),
        spacing=(0.0, float(dy), float(dx)),
        transfer_syntax=first.transfer_syntax,
        findings=findings,
        metadata=metadata,
    )
    if not first.has_pixels:
        info.files = [h.path for h in group]
        info.slices = list(group)
        info.shape = (len(group), first.rows, first.columns)
        findings.append(Finding("no_pixel_data", "info", "series has no image pixel data"))
        return info
    refusal = _layout_refusal(group)
    if refusal is not None:
        # One true reason; geometry findings would be false (e.g. an enhanced CT's geometry is
        # in its functional groups, not in the top-level attributes).
        info.files = [h.path for h in group]
        info.slices = list(group)
        info.shape = (len(group) * first.frames, first.rows, first.columns)
        findings.append(refusal)
        return info
    from medscan.dicom.pixels import unsupported_syntax  # pixels imports this module

    syntaxes = sorted({h.transfer_syntax for h in group})
    for ts in syntaxes:
        why = unsupported_syntax(ts)
        if why:
            findings.append(Finding(
                "unsupported_transfer_syntax", "error", why,
                [str(h.path) for h in group if h.transfer_syntax == ts], {"uid": ts}))
    if ps is None:
        findings.append(
            Finding("no_pixel_spacing", "warning", "no PixelSpacing; 1 mm assumed", [])
        )
    if first.orientation is None or any(h.position is None for h in group):
        # No geometry: order by InstanceNumber, then path; no affine.
        group = sorted(group, key=lambda h: (h.instance_number or 0, str(h.path)))
        info.files = [h.path for h in group]
        info.slices = group
        info.shape = (len(group), first.rows, first.columns)
        findings.append(
            Finding(
                "no_geometry",
                "error",
                "files lack ImagePositionPatient/ImageOrientationPatient: cannot place slices",
                [str(h.path) for h in group if h.position is None]
                or [str(first.path)],
            )
        )
        return info

    normal = _normal(first.orientation)
    proj = np.array([float(h.position @ normal) for h in group])
    order = sorted(
        range(len(group)),
        key=lambda i: (proj[i], group[i].instance_number or 0, str(group[i].path)),
    )
    group = [group[i] for i in order]
    proj = proj[order]

    # Same position, different instance: keep the first, report the rest.
    keep = [0]
    dropped: list[tuple[SliceHeader, SliceHeader]] = []
    for i in range(1, len(group)):
        if abs(proj[i] - proj[keep[-1]]) < SAME_POSITION_MM:
            dropped.append((group[keep[-1]], group[i]))
        else:
            keep.append(i)
    if dropped:
        findings.append(
            Finding(
                "duplicate_position",
                "warning",
                f"{len(dropped)} slice(s) share a position with another instance "
                "(different SOPInstanceUID); the first of each is kept, the others dropped",
                sorted({str(p) for a, b in dropped for p in (a.path, b.path)}),
                {
                    "positions_mm": [float(a.position @ normal) for a, _ in dropped],
                    "dropped": [str(b.path) for _, b in dropped],
                },
            )
        )
    if dropped and len(dropped) >= len(keep):
        findings.append(_duplicate_geometry(group, keep, len(dropped)))
    group = [group[i] for i in keep]
    proj = proj[keep]
    n = len(group)
    info.files = [h.path for h in group]
    info.slices = group
    info.shape = (n, first.rows, first.columns)

    row, col = first.orientation[:3], first.orientation[3:]
    positions = np.array([h.position for h in group])
    steps = np.diff(proj)
    if n > 1:
        median = float(np.median(steps))
        step_vec = (positions[-1] - positions[0]) / (n - 1)
    else:
        median = float(first.slice_thickness or 1.0)
        step_vec = normal * median
        findings.append(
            Finding("single_slice", "info", f"one slice; {median:g} mm slice step assumed")
        )
    info.spacing = (median, float(dy), float(dx))
    affine = np.eye(4)
    affine[:3, 0] = row * dx
    affine[:3, 1] = col * dy
    affine[:3, 2] = step_vec
    affine[:3, 3] = positions[0]
    info.affine = affine
    if n > 1:
        findings += _spacing_findings(group, positions, proj, steps, median, step_vec, normal)
    findings += _rescale_findings(group)
    # Every number that enters the affine or the HU, checked (issue 19): refusals, not repairs.
    findings += validate.rescale_findings(group)
    findings += validate.geometry_findings(group)
    findings += validate.stack_findings(group, proj, affine)
    return info


def _duplicate_geometry(group: list[SliceHeader], keep: list[int], n_dropped: int) -> Finding:
    """Refuse a stack where at least half the instances repeat a position.

    E.g. 30 slices at one position, or two stacks that nothing in the header tells apart:
    keeping "the first" of each would be an arbitrary choice between two images, not a
    duplicate clean-up.
    """
    return Finding(
        "duplicate_geometry",
        "error",
        f"{len(group)} instances lie at only {len(keep)} distinct position(s) along the slice "
        f"normal ({n_dropped} repeat a position) and no acquisition or reconstruction attribute "
        "tells them apart: duplicate geometry (same ImagePositionPatient); the series is not "
        "loaded",
        [str(h.path) for h in group[:20]],
        {"n_instances": len(group), "n_positions": len(keep)},
    )


def _spacing_findings(
    group: list[SliceHeader],
    positions: np.ndarray,
    proj: np.ndarray,
    steps: np.ndarray,
    median: float,
    step_vec: np.ndarray,
    normal: np.ndarray,
) -> list[Finding]:
    findings: list[Finding] = []
    gaps = np.nonzero(steps > GAP_FACTOR * median)[0]
    if gaps.size:
        details = []
        files: list[str] = []
        for g in gaps:
            missing = max(round(float(steps[g]) / median) - 1, 1)
            details.append(
                {
                    "after_index": int(g),
                    "from_mm": round(float(proj[g]), 4),
                    "to_mm": round(float(proj[g + 1]), 4),
                    "step_mm": round(float(steps[g]), 4),
                    "from_position_lps": positions[g].round(4).tolist(),
                    "to_position_lps": positions[g + 1].round(4).tolist(),
                    "estimated_missing": int(missing),
                }
            )
            files += [str(group[g].path), str(group[g + 1].path)]
        text = "; ".join(
            f"{d['step_mm']:g} mm between {d['from_mm']:g} and {d['to_mm']:g} mm "
            f"(about {d['estimated_missing']} missing)"
            for d in details[:3]
        ) + (f"; ... ({len(details) - 3} more)" if len(details) > 3 else "")
        findings.append(
            Finding(
                "missing_slices",
                "warning",
                f"{len(details)} gap(s) larger than {GAP_FACTOR}x the median step "
                f"{median:g} mm along the slice normal: {text}",
                files,
                {"median_step_mm": median, "gaps": details},
            )
        )
    regular = np.delete(steps, gaps)
    tol = max(SPACING_TOL_MM, SPACING_TOL_REL * median)
    if regular.size and float(np.max(np.abs(regular - median))) > tol:
        uniq = sorted({round(float(s), 3) for s in steps})
        # Where the mean-step affine puts each slice vs where it really is (mm).
        expected = positions[0] + np.outer(np.arange(len(group)), step_vec)
        error = float(np.max(np.linalg.norm(expected - positions, axis=1)))
        findings.append(
            Finding(
                "nonuniform_spacing",
                "warning",
                f"slice steps along the normal vary: {uniq} mm (median {median:g} mm); by "
                f"default (uniform=true, as in medscan segment) the stack is resampled to the "
                f"median step by linear interpolation between neighbouring slices (a "
                f"'resampled' finding follows); with uniform=false the acquired slices are "
                f"kept and the mean-step affine places them up to {error:.2f} mm from their "
                f"true position",
                [],
                {"steps_mm": steps.round(4).tolist(), "max_position_error_mm": error},
            )
        )
    unit = step_vec / np.linalg.norm(step_vec)
    angle = float(np.degrees(np.arccos(np.clip(abs(unit @ normal), -1.0, 1.0))))
    tags = {h.gantry_tilt for h in group if h.gantry_tilt is not None}
    tag = max(tags, key=abs) if tags else None
    if angle > TILT_TOL_DEG:
        findings.append(
            Finding(
                "gantry_tilt",
                "warning",
                f"slices are stacked {angle:.2f} degrees off their normal (gantry tilt"
                + (f", GantryDetectorTilt {tag:g} deg" if tag is not None else "")
                + "); the affine is sheared so every voxel keeps its true position; "
                "no resampling was done",
                [],
                {"angle_deg": angle, "gantry_detector_tilt_deg": tag},
            )
        )
    elif tag:
        findings.append(
            Finding(
                "gantry_tilt_tag",
                "info",
                f"GantryDetectorTilt is {tag:g} deg but the slice positions show no tilt",
                [],
                {"gantry_detector_tilt_deg": tag},
            )
        )
    return findings


def _rescale_findings(group: list[SliceHeader]) -> list[Finding]:
    pairs = {(h.slope, h.intercept) for h in group}
    if len(pairs) <= 1:
        return []
    return [
        Finding(
            "rescale_varies",
            "info",
            f"RescaleSlope/RescaleIntercept differ between slices ({len(pairs)} pairs); "
            "HU are computed per slice",
            [],
            {"pairs": sorted([list(p) for p in pairs])},
        )
    ]
