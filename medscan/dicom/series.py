"""Group headers into series, order slices along the normal, compute the affine and QC findings.

Geometry rules (see ``docs/dicom.md``):

* Files are grouped by SeriesInstanceUID, then split where orientation, rows/columns or pixel
  spacing differ (the largest group keeps split index 0).
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
            "files": [str(p) for p in self.files],
        }


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
        ordered = _geometry_groups(unique)
        for split, group in enumerate(ordered):
            info = build_series(group, uid, split, salt)
            mine = {str(p) for p in info.files}
            info.findings[:0] = [f for f in dup_findings if set(f.files) & mine]
            if len(ordered) > 1:
                shapes = ", ".join(f"{len(g)} files {g[0].rows}x{g[0].columns} px" for g in ordered)
                info.findings.append(
                    Finding(
                        "geometry_split",
                        "warning",
                        f"one SeriesInstanceUID holds files of different geometry "
                        f"(orientation, rows/columns or pixel spacing): {shapes}; split into "
                        f"{len(ordered)} volumes, this is part {split} "
                        f"({group[0].rows}x{group[0].columns} px, {len(group)} files)",
                        [str(h.path) for h in group],
                        {
                            "n_parts": len(ordered),
                            "part": split,
                            "rows": group[0].rows,
                            "columns": group[0].columns,
                        },
                    )
                )
            out.append(info)
    out.sort(key=lambda s: s.case_id)
    return out


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
    if ps is None:
        findings.append(
            Finding("no_pixel_spacing", "warning", "no PixelSpacing; 1 mm assumed", [])
        )
    if first.frames > 1 or first.samples_per_pixel != 1:
        findings.append(
            Finding(
                "unsupported_layout",
                "error",
                f"multi-frame ({first.frames} frames) or colour ({first.samples_per_pixel} "
                "samples) images are not loaded as CT volumes",
                [str(h.path) for h in group],
            )
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
                [str(h.path) for h in group if h.position is None] or [str(first.path)],
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
                sorted({str(p) for pair in dropped for p in (pair[0].path, pair[1].path)}),
                {
                    "positions_mm": [float(a.position @ normal) for a, _ in dropped],
                    "dropped": [str(b.path) for _, b in dropped],
                },
            )
        )
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
                f"slice steps along the normal vary: {uniq} mm (median {median:g} mm); the "
                f"volume keeps the acquired slices and its affine uses the mean step, so "
                f"slices are placed up to {error:.2f} mm from their true position",
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
