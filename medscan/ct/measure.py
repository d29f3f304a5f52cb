"""Measurements from a label map: tissue volumes and HU statistics, lung densitometry.

* volume (mL) = voxel count x |det(affine[:3, :3])| / 1000;
* mean / std HU per label (population std, float64 accumulation);
* lungs (``lung_left`` + ``lung_right``): total, left and right volume, mean lung density
  (mean HU), %LAA-950 (share of lung voxels below -950 HU, in percent) and Perc15 (the
  15th percentile of lung HU, linear interpolation), the standard CT emphysema indices;
* coverage (:func:`lung_coverage`): a lung that touches the first or last slice of the scan
  range, the edge of the image or the edge of the reconstructed field of view continues
  outside the data, so its volume is only the part inside the scan (``lung_complete: false``
  and a ``lung_truncated`` finding);
* :func:`measure_case` -- THE entry point: every metric of ``metrics.json`` from a volume and a
  label map (the above, plus lung density bands per lung and total, the regional analysis and
  per-structure statistics: :mod:`medscan.ct.density`, :mod:`medscan.ct.regions`,
  :mod:`medscan.ct.structures`). The ``segment`` job (through the case analysis), ``medscan
  measure`` and the napari widget all call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medscan.backend import Backend, get_backend
from medscan.ct.density import DensityBands, default_density_bands
from medscan.ct.orient import canonical_reorientation
from medscan.ct.regions import (
    HALVES,
    THIRDS,
    LungVoxels,
    lung_regions,
    lung_regions_from_histogram,
    lung_voxels,
    region_grid,
)
from medscan.ct.structures import (
    MAX_ALL_LABEL_BINS,
    label_counts,
    label_geometry,
    label_hu_histogram,
    ndimage_boxes,
    row_hu_histogram,
    structure_stats,
)
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, TissueTable
from medscan.defaults import measure_defaults
from medscan.io.layout import LUNG_KEYS  # the output contract (index.csv columns)
from medscan.volume import AIR_HU, Finding, Volume


def measure(
    hu: np.ndarray,
    labels: np.ndarray,
    tissues: TissueTable,
    voxel_volume_ml: float,
    lungs_found: bool = True,
    be: Backend | None = None,
    slab: int = 16,
) -> dict[str, Any]:
    """Tissue and lung metrics.

    Parameters
    ----------
    hu : numpy.ndarray
        HU volume ``(z, y, x)``.
    labels : numpy.ndarray
        uint8 label map on the same grid.
    tissues : TissueTable or dict
        Label ids and names: a tissue table, or any label table ``{id: name}`` (the lungs
        are the labels named ``lung_left`` / ``lung_right``; without them the lung metrics
        are ``None``).
    voxel_volume_ml : float
        Volume of one voxel in mL (``Volume.voxel_volume_ml``).
    lungs_found : bool
        False: the lung metrics are ``None``.
    be : Backend, optional
        Array backend (default: CPU).
    slab : int
        Slices processed at a time (bounds the temporary memory).

    Returns
    -------
    dict
        ``lung_volume_ml, lung_left_ml, lung_right_ml, mean_lung_hu, laa950_percent,
        perc15_hu`` and ``tissues: {name: {label, volume_ml, mean_hu, std_hu, voxels}}``;
        JSON-safe.
    """
    be = be or get_backend("cpu")
    xp = be.xp
    hu_d = be.asarray(hu)
    lab = be.asarray(labels)
    names = label_names(tissues)
    ids = list(names)
    by_name = {name: i for i, name in names.items()}
    lung_ids = tuple(by_name[n] for n in (LUNG_LEFT, LUNG_RIGHT) if n in by_name)
    count = dict.fromkeys(ids, 0)
    total = dict.fromkeys(ids, 0.0)
    total_sq = dict.fromkeys(ids, 0.0)
    lung_values = []
    # slab by slab: no whole-volume temporaries (masks, float64 copies)
    for k in range(0, lab.shape[0], slab):
        lab_s, hu_s = lab[k : k + slab], hu_d[k : k + slab]
        for i in ids:
            values = hu_s[lab_s == i]
            if values.size == 0:
                continue
            v64 = values.astype(xp.float64)
            count[i] += int(values.size)
            total[i] += float(v64.sum())
            total_sq[i] += float((v64 * v64).sum())
            if i in lung_ids:
                lung_values.append(values)
    out: dict[str, Any] = {"tissues": {}}
    for label, name in names.items():
        n = count[label]
        stats = {"label": label, "voxels": n, "volume_ml": round(n * voxel_volume_ml, 3)}
        if n:
            mean = total[label] / n
            std = float(np.sqrt(max(total_sq[label] / n - mean * mean, 0.0)))
            stats.update(mean_hu=round(mean, 2), std_hu=round(std, 2))
        else:
            stats.update(mean_hu=None, std_hu=None)
        out["tissues"][name] = stats
    empty = {"voxels": 0, "volume_ml": 0.0}
    left = out["tissues"].get(LUNG_LEFT, empty)
    right = out["tissues"].get(LUNG_RIGHT, empty)
    if not lungs_found or left["voxels"] + right["voxels"] == 0:
        out.update({k: None for k in LUNG_KEYS})
        return out
    lung = xp.concatenate(lung_values)
    n = int(lung.size)
    out.update(
        lung_volume_ml=round(n * voxel_volume_ml, 3),
        lung_left_ml=left["volume_ml"],
        lung_right_ml=right["volume_ml"],
        lung_complete=None,  # set by lung_coverage
        mean_lung_hu=round(float(xp.mean(lung, dtype=xp.float64)), 2),
        laa950_percent=round(100.0 * int(xp.count_nonzero(lung < -950)) / n, 3),
        perc15_hu=round(float(xp.percentile(lung.astype(xp.float32), 15.0)), 2),
    )
    return out


def label_names(table: Any) -> dict[int, str]:
    """``{label id: name}`` from a :class:`TissueTable`, a label map's table or a plain dict.

    Accepts a :class:`TissueTable`, a mapping ``{id: name}``, ``{id: obj with .name}`` (e.g.
    ``LabelMap.labels``) or the manifest form ``{"<id>": {"name": ...}}``.

    Raises
    ------
    ValueError
        When an id is not in 1..255 or a name repeats.
    """
    if isinstance(table, TissueTable):
        return {t.label: t.name for t in table.all}
    out: dict[int, str] = {}
    for key, value in dict(table).items():
        label = int(key)
        if isinstance(value, str):
            name = value
        elif isinstance(value, Mapping):
            name = str(value["name"])
        else:
            name = str(value.name)
        if not 0 < label < 256:
            raise ValueError(f"label table: id {label} ({name!r}) is not in 1..255")
        out[label] = name
    if len(set(out.values())) != len(out):
        raise ValueError("label table: names must be unique")
    return dict(sorted(out.items()))


#: Faces of the canonical (axial, toward head/back/left) array, by anatomical direction:
#: (array axis, index).
_FACES = {
    "inferior": (0, 0),
    "superior": (0, -1),
    "anterior": (1, 0),
    "posterior": (1, -1),
    "right": (2, 0),
    "left": (2, -1),
}


def lung_coverage(
    hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    tissues: TissueTable,
    min_contact_cm2: float | None = None,
    padding_hu: float = AIR_HU,
    *,
    counts: np.ndarray | None = None,
    face_counts: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], list[Finding]]:
    """Say whether each lung lies wholly inside the scanned region.

    A lung is incomplete when more than ``min_contact_cm2`` of it lies on a face of the
    volume (the first or last slice of the scan range, or the image edge in-plane) or along
    the edge of the reconstructed field of view (pixels that hold the padding value on every
    slice, when they surround a disk: the scan circle). Faces are named anatomically
    (superior, inferior, left, right, anterior, posterior) whatever the stored orientation
    (the check runs on the canonical view of :mod:`medscan.ct.orient`). This is the
    truncation check TotalSegmentator applies to its organ statistics, here per lung.

    Parameters
    ----------
    hu : numpy.ndarray
        HU volume ``(z, y, x)`` as stored.
    labels : numpy.ndarray
        uint8 label map on the same grid.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> LPS mm.
    tissues : TissueTable or dict
        Lung label ids (a tissue table or any label table, see :func:`label_names`).
    min_contact_cm2 : float, optional
        Contact area (cm²) below which a touch is ignored (a few noisy voxels); default
        ``measure.min_contact_cm2`` of ``conf/metrics/default.yaml``.
    padding_hu : float
        Value of pixels outside the reconstructed field of view (the loader's padding).
    counts : numpy.ndarray, optional
        Voxels per label id (``(256,)``, :func:`medscan.ct.structures.label_counts`), when
        already computed.
    face_counts : dict, optional
        :func:`face_label_counts` of the label map, when already computed.

    Returns
    -------
    coverage : dict
        ``{lung_name: {"complete": bool, "contact_cm2": {face: area}}}`` (faces with contact
        only); lungs without voxels are absent.
    findings : list of Finding
        One ``lung_truncated`` warning per incomplete lung.
    """
    if min_contact_cm2 is None:
        min_contact_cm2 = float(measure_defaults()["min_contact_cm2"])
    sx, sy, sz = _canonical_spacing(affine, labels.shape)
    face_cm2 = {0: sy * sx / 100.0, 1: sz * sx / 100.0, 2: sz * sy / 100.0}
    if face_counts is None:
        face_counts = face_label_counts(hu, labels, affine, padding_hu)
    if counts is None:
        from medscan.ct.structures import label_counts

        counts = label_counts(labels)

    def contacts(per_face: dict[str, int], faces: dict[str, tuple[int, int]]
                 ) -> dict[str, float]:
        # per_face: voxels of the structure on each face (one bincount per face, all labels)
        out: dict[str, float] = {}
        for face, (axis, _index) in faces.items():
            area = float(per_face[face]) * face_cm2[axis]
            if area > 0:
                out[face] = round(float(area), 2)
        n = per_face.get("field_of_view", 0)
        if n:
            out["field_of_view"] = round(float(n * sz * (sx + sy) / 2.0 / 100.0), 2)
        return out

    lung_ids = _lung_ids(tissues)
    coverage: dict[str, Any] = {}
    findings: list[Finding] = []
    for name, label in lung_ids.items():
        if not counts[label]:
            continue
        contact = contacts({f: int(c[label]) for f, c in face_counts.items()}, _FACES)
        complete = all(a < min_contact_cm2 for a in contact.values())
        coverage[name] = {"complete": complete, "contact_cm2": contact}
        if not complete:
            where = ", ".join(f"{face} ({a:g} cm²)" for face, a in contact.items()
                              if a >= min_contact_cm2)
            findings.append(Finding(
                "lung_truncated", "warning",
                f"{name} touches the edge of the scanned region: {where}; it continues outside "
                "the data, so its volume and the lung totals cover only the part inside the "
                "scan (lung_complete: false)",
                details={"structure": name, "contact_cm2": contact},
            ))
    # the body always continues above and below a chest scan; in-plane it must be whole
    in_plane = {k: v for k, v in _FACES.items() if v[0] != 0}
    body = contacts({f: int(c[1:].sum()) for f, c in face_counts.items()}, in_plane)
    cut = {face: a for face, a in body.items() if a >= min_contact_cm2}
    if cut:
        where = ", ".join(f"{face} ({a:g} cm²)" for face, a in cut.items())
        findings.append(Finding(
            "body_truncated", "warning",
            f"the body reaches the edge of the image or of the reconstructed field of view: "
            f"{where}; tissue volumes cover only the part inside it (and a lung cut open "
            "by a scan circle cannot be told from the outside air)",
            details={"contact_cm2": body},
        ))
        if len(lung_ids) == 2:
            _lung_lost_to_edge(counts, lung_ids, coverage, findings, cut)
    return coverage, findings


def _lung_ids(tissues: Any) -> dict[str, int]:
    """``{lung name: id}`` of the lungs present in a label table (right first)."""
    by_name = {name: i for i, name in label_names(tissues).items()}
    return {name: by_name[name] for name in (LUNG_RIGHT, LUNG_LEFT) if name in by_name}


#: A lung smaller than this share of the other, with the body cut by the image edge or the
#: field of view, is taken as cut open there (normal left/right ratios are about 0.8-1.2).
SMALL_LUNG_FRACTION = 0.5


def _lung_lost_to_edge(
    counts: np.ndarray, lung_ids: dict[str, int], coverage: dict[str, Any],
    findings: list[Finding], cut: dict[str, float],
) -> None:
    """Mark a missing or much smaller lung incomplete when the body is cut in-plane.

    A lung cut open by the image edge or the reconstructed field of view is joined to the
    outside air: the segmentation cannot tell it from air and drops it (or keeps only a part
    closed off inside the body). Its absence is then no evidence of an absent or collapsed
    lung, so the lung is reported incomplete with a ``lung_truncated`` finding that names the
    field-of-view truncation (``details.reason = "field_of_view"``).
    """
    ml = {name: float(counts[label]) for name, label in lung_ids.items()}
    big = max(ml, key=ml.get)
    small = LUNG_LEFT if big == LUNG_RIGHT else LUNG_RIGHT
    if ml[big] == 0 or ml[small] >= SMALL_LUNG_FRACTION * ml[big]:
        return
    entry = coverage.setdefault(small, {"complete": False, "contact_cm2": {}})
    entry["complete"] = False
    entry["field_of_view_suspected"] = True
    state = (f"is much smaller than {big} ({ml[small] / ml[big]:.0%} of its voxels)"
             if ml[small] else "was not found")
    where = ", ".join(f"{face} ({a:g} cm²)" for face, a in cut.items())
    # one finding per lung: this one says more than a plain face contact
    findings[:] = [f for f in findings if not (
        f.code == "lung_truncated" and f.details.get("structure") == small)]
    findings.append(Finding(
        "lung_truncated", "warning",
        f"{small} {state} while the body is cut by the edge of the image or of the "
        f"reconstructed field of view ({where}): the lung is probably cut off there (the "
        "part outside the image, or cut open and read as outside air, is missing), not "
        "absent or small; its volume and the lung totals are partial (lung_complete: false)",
        details={"structure": small, "reason": "field_of_view", "contact_cm2": cut,
                 "voxel_ratio": round(ml[small] / ml[big], 3)},
    ))


def _fov_edge(hu_canonical: np.ndarray, padding_hu: float) -> np.ndarray | None:
    """In-plane ring just inside the reconstructed field of view, or None (no scan circle).

    Pixels holding the padding value on every slice were never reconstructed; when they
    surround a disk (:func:`_is_scan_circle`) the disk's edge is the field of view's.
    """
    # slice by slice (no whole-volume boolean temporary), stopping once no pixel is left
    outside_fov = hu_canonical[0] == padding_hu
    for k in range(1, hu_canonical.shape[0]):
        if not outside_fov.any():
            break
        outside_fov &= hu_canonical[k] == padding_hu
    if not _is_scan_circle(~outside_fov):
        return None
    from scipy import ndimage

    return ndimage.binary_dilation(outside_fov, np.ones((3, 3), bool)) & ~outside_fov


def structure_contacts(
    hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, padding_hu: float = AIR_HU,
    *, face_counts: dict[str, np.ndarray] | None = None,
) -> dict[int, dict[str, float]]:
    """Contact area (cm²) of every label with each face of the volume and the field of view.

    The per-label form of :func:`lung_coverage`'s test (same faces, named anatomically on the
    canonical view; same scan-circle edge): one ``numpy.bincount`` of the label ids on each
    face instead of one mask per label.

    Parameters
    ----------
    hu : numpy.ndarray
        HU volume ``(z, y, x)`` as stored.
    labels : numpy.ndarray
        uint8 label map on the same grid.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> LPS mm.
    padding_hu : float
        Value of pixels outside the reconstructed field of view.
    face_counts : dict, optional
        :func:`face_label_counts` of the label map, when already computed.

    Returns
    -------
    dict
        ``{label id: {face: cm²}}`` with faces ``superior, inferior, anterior, posterior,
        right, left`` and ``field_of_view``; only non-zero contacts, only labels present.
    """
    sx, sy, sz = _canonical_spacing(affine, labels.shape)
    face_cm2 = {0: sy * sx / 100.0, 1: sz * sx / 100.0, 2: sz * sy / 100.0}
    if face_counts is None:
        face_counts = face_label_counts(hu, labels, affine, padding_hu)
    out: dict[int, dict[str, float]] = {}

    def add(face: str, counts: np.ndarray, cm2: float) -> None:
        for label in np.flatnonzero(counts[1:]) + 1:
            out.setdefault(int(label), {})[face] = round(float(counts[label] * cm2), 2)

    for face, (axis, _index) in _FACES.items():
        add(face, face_counts[face], face_cm2[axis])
    if "field_of_view" in face_counts:
        add("field_of_view", face_counts["field_of_view"],
            float(sz * (sx + sy) / 2.0 / 100.0))
    return out


def _canonical_spacing(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Voxel size (mm) along the canonical array's x, y, z axes (:mod:`medscan.ct.orient`)."""
    reo = canonical_reorientation(affine)
    return np.linalg.norm(reo.canonical_affine(affine, shape)[:3, :3], axis=0)


def face_label_counts(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                      padding_hu: float = AIR_HU) -> dict[str, np.ndarray]:
    """Voxels of every label id on each face of the volume and along the field-of-view edge.

    Parameters
    ----------
    hu : numpy.ndarray
        HU volume ``(z, y, x)`` as stored.
    labels : numpy.ndarray
        uint8 label map on the same grid.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> LPS mm.
    padding_hu : float
        Value of pixels outside the reconstructed field of view.

    Returns
    -------
    dict
        ``{face: int64 (256,) counts}`` for the faces of :data:`_FACES` (named anatomically on
        the canonical view) and, when the volume has a scan circle (:func:`_fov_edge`),
        ``field_of_view``: the voxels on the ring just inside it, over all slices. One
        ``numpy.bincount`` per face gives every label's contact at once (the shared input of
        :func:`lung_coverage` and :func:`structure_contacts`).
    """
    reo = canonical_reorientation(affine)
    lab = reo.to_canonical(labels)
    out = {face: np.bincount(np.take(lab, index, axis=axis).ravel(), minlength=256)
           for face, (axis, index) in _FACES.items()}
    fov_edge = _fov_edge(reo.to_canonical(hu), padding_hu)
    if fov_edge is not None:
        # the ring's pixels on every slice at once: one gather (n_slices, ring), one bincount
        out["field_of_view"] = np.bincount(lab[:, fov_edge].ravel(), minlength=256)
    return out


def _is_scan_circle(inside: np.ndarray, tolerance: float = 0.03) -> bool:
    """True when the reconstructed in-plane region is a disk (a scan circle).

    Only then is its edge the field of view's: a scanner that clips air outside the body to
    the padding value on every slice also leaves padding-only pixels, but around the body's
    outline, which is no disk (area within ``tolerance`` of the inscribed ellipse's, and a
    round bounding box, are required).
    """
    if inside.all() or not inside.any():
        return False
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    ellipse = np.pi * h * w / 4.0
    return abs(int(np.count_nonzero(inside)) - ellipse) <= tolerance * ellipse and (
        abs(h - w) <= tolerance * max(h, w))


def add_coverage(metrics: dict[str, Any], coverage: dict[str, Any]) -> dict[str, Any]:
    """Put :func:`lung_coverage`'s result into ``metrics`` (``coverage``, ``lung_complete``).

    ``lung_complete`` is true when every lung found is complete, false when one is not, and
    stays null when no lungs were found.
    """
    metrics["coverage"] = coverage
    if metrics.get("lung_volume_ml") is not None:
        metrics["lung_complete"] = all(c["complete"] for c in coverage.values())
    return metrics


@dataclass
class MeasureOptions:
    """What :func:`measure_case` computes beyond the base metrics.

    Attributes
    ----------
    density : DensityBands
        Lung density bands (default: ``conf/density/lcta.yaml``, Lung CT Analyzer).
    regions : bool
        Regional analysis (thirds along S, ventral/dorsal halves) per lung.
    structures : bool
        Per-structure statistics of every label.
    min_contact_cm2 : float
        Contact with the edge of the scanned region below which a structure counts as
        complete (:func:`lung_coverage`).
    """

    density: DensityBands = field(default_factory=default_density_bands)
    regions: bool = field(default_factory=lambda: bool(measure_defaults()["regions"]))
    structures: bool = field(default_factory=lambda: bool(measure_defaults()["structures"]))
    min_contact_cm2: float = field(
        default_factory=lambda: float(measure_defaults()["min_contact_cm2"]))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> MeasureOptions:
        """From the ``density`` group and the ``measure`` block of a job config (may be None)."""
        cfg = cfg or {}
        block = {**measure_defaults(), **(cfg.get("measure") or {})}
        density = (DensityBands.from_config(cfg["density"]) if cfg.get("density")
                   else default_density_bands())
        return cls(density=density, regions=bool(block["regions"]),
                   structures=bool(block["structures"]),
                   min_contact_cm2=float(block["min_contact_cm2"]))


def measure_case(
    volume: Volume,
    labels: Any,
    tissues: Any = None,
    options: MeasureOptions | None = None,
    *,
    surfaces: Mapping[str, Any] | None = None,
    be: Backend | None = None,
    lungs_found: bool | None = None,
) -> tuple[dict[str, Any], list[Finding]]:
    """Every metric of ``metrics.json`` from a volume and a label map on its grid.

    The base metrics of :func:`measure` (``tissues``, the lung keys of :data:`LUNG_KEYS`),
    the lung coverage (:func:`lung_coverage`: ``coverage``, ``lung_complete``) and the issue-14
    blocks: ``density_bands`` (per lung and total, :mod:`medscan.ct.density`), ``regions``
    (:mod:`medscan.ct.regions`) and ``structures`` (:mod:`medscan.ct.structures`, with
    ``surface_area_mm2`` from ``surfaces`` and ``complete`` from the coverage test).

    Parameters
    ----------
    volume : Volume
        HU volume ``(z, y, x)`` and its affine.
    labels : LabelMap or numpy.ndarray
        uint8 label map on the volume's grid: a :class:`~medscan.volume.LabelMap` (its
        ``array``, ``affine`` and label table are used) or a bare array.
    tissues : TissueTable or dict, optional
        Label table (see :func:`label_names`); default: the label map's own table.
    options : MeasureOptions, optional
        Density bands and what to compute (default: :class:`MeasureOptions`).
    surfaces : dict, optional
        ``{label name: trimesh.Trimesh}`` in LPS mm (the case's meshes): their area is the
        structure's ``surface_area_mm2`` (null for labels not meshed).
    be : Backend, optional
        Array backend for the base metrics (default CPU).
    lungs_found : bool, optional
        False: the lung metrics of :data:`LUNG_KEYS` are null (default: lung voxels present).

    Returns
    -------
    metrics : dict
        JSON-safe ``metrics.json`` content.
    findings : list of Finding
        ``lung_truncated`` / ``body_truncated`` warnings.

    Raises
    ------
    ValueError
        When the label map's shape or affine differs from the volume's, it is not uint8, or
        no label table is given.
    """
    options = options or MeasureOptions()
    array = np.asarray(getattr(labels, "array", labels))
    label_affine = getattr(labels, "affine", None)
    if array.shape != volume.hu.shape:
        raise ValueError(f"label map shape {array.shape} differs from the volume's "
                         f"{volume.hu.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"label map must be uint8, got {array.dtype}")
    if label_affine is not None and not np.allclose(label_affine, volume.affine, atol=1e-3):
        raise ValueError("label map and volume have different affines (not the same grid)")
    table = tissues if tissues is not None else getattr(labels, "labels", None)
    if table is None:
        raise ValueError("no label table: give tissues= or a LabelMap with labels")
    names = label_names(table)
    ml = volume.voxel_volume_ml
    hu = volume.hu
    lung_ids = _lung_ids(names)
    integer = np.issubdtype(hu.dtype, np.integer) and hu.size > 0
    cpu = be is None or be.name == "cpu"
    if cpu and integer and 255 < array.size < 2**32 and (
            256 * (int(hu.max()) - int(hu.min()) + 1) <= MAX_ALL_LABEL_BINS):
        passes = _one_pass(hu, array, volume.affine, lung_ids, options.density, ml)
    else:  # float HU, an accelerator, a very wide HU range, a tiny or huge map
        passes = _per_block_passes(hu, array, volume.affine, lung_ids, options.density, ml)
    counts, present, histogram, boxes, centres, lung_hu, density, regions = passes
    face_counts = face_label_counts(hu, array, volume.affine)
    if cpu and integer:
        metrics = _measure_from_histogram(names, counts, present, histogram, ml,
                                          lungs_found is not False, lung_hu)
    else:  # float HU or an accelerator: gather per label
        metrics = measure(hu, array, names, ml, lungs_found is not False, be=be)
    metrics["voxel_volume_ml"] = ml
    coverage, findings = lung_coverage(hu, array, volume.affine, names,
                                       min_contact_cm2=options.min_contact_cm2,
                                       counts=counts, face_counts=face_counts)
    add_coverage(metrics, coverage)
    metrics["density_bands"] = {"definition": options.density.to_dict(), **density}
    if options.regions:
        metrics["regions"] = regions
    if options.structures:
        stats = structure_stats(hu, array, volume.affine, names, counts=counts, boxes=boxes,
                                histogram=histogram, centres=centres)
        contacts = structure_contacts(hu, array, volume.affine, face_counts=face_counts)
        metrics["structures"] = _structures(stats, contacts, coverage, surfaces or {},
                                            options.min_contact_cm2)
    return metrics, findings


#: What :func:`measure_case`'s shared passes give its blocks: voxel counts per id, the ids
#: present, the (values, per-label HU histogram) of the ids present (integer HU), index boxes,
#: mean voxel indices (None: computed by structure_stats), the lung HU values for Perc15, and
#: the density and regions blocks.
_Passes = tuple[np.ndarray, np.ndarray, "tuple[np.ndarray, np.ndarray] | None",
                "list[tuple[slice, ...] | None]", "dict[int, list[float]] | None",
                "np.ndarray | None", dict[str, Any], dict[str, Any]]


def _one_pass(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, lung_ids: dict[str, int],
              bands: DensityBands, voxel_volume_ml: float) -> _Passes:
    """The shared passes for integer HU on the CPU: two walks over the volume.

    :func:`~medscan.ct.structures.label_geometry` (counts, boxes, mean indices, one cc3d
    pass) and one (row, HU) histogram (:func:`~medscan.ct.structures.row_hu_histogram`) over
    the labelled voxels' box, in which each lung has six rows, one per (third, half) region
    (:func:`~medscan.ct.regions.region_grid`): every label's HU statistics, the lung metrics,
    the density bands and the regional analysis follow from it exactly, without gathering the
    lung voxels. Perc15 is ``numpy.percentile`` of the lung HU rebuilt from the histogram
    (``numpy.repeat``: the same float32 values, sorted; a percentile does not depend on order).
    """
    counts, boxes, centres = label_geometry(labels)
    present = np.flatnonzero(counts[1:]) + 1
    lo, hi = int(hu.min()), int(hu.max())
    values = np.arange(lo, hi + 1, dtype=np.int64)
    lungs = {name: label for name, label in lung_ids.items() if counts[label]}
    # rows of the histogram: 0 for the background (and absent ids), one per label present,
    # six per lung (one per region: third * 2 + half)
    n_regions = len(THIRDS) * len(HALVES)
    label_rows = np.zeros(256, np.int64)
    span: dict[int, slice] = {}
    n_rows = 1
    for label in map(int, present):
        label_rows[label] = n_rows
        n_rows += n_regions if label in lungs.values() else 1
        span[label] = slice(int(label_rows[label]), n_rows)
    splits, bounds = [], {}
    for name, label in lungs.items():
        box = boxes[label - 1]
        grid, bounds[name] = region_grid(labels, affine, label, box)  # type: ignore[arg-type]
        splits.append((label, box, grid))
    rows = np.zeros((n_rows, values.size), np.int64)
    if present.size:
        union = tuple(slice(min(boxes[i - 1][a].start for i in present),  # type: ignore[index]
                            max(boxes[i - 1][a].stop for i in present))  # type: ignore[index]
                      for a in range(3))
        rows = row_hu_histogram(hu, labels, label_rows, n_rows, lo, values.size, union,
                                tuple(splits))
    per_label = np.zeros((present.size, values.size), np.int64)
    for r, label in enumerate(map(int, present)):
        per_label[r] = rows[span[label]].sum(axis=0)
    lung_rows = {name: (rows[span[label]], bounds[name]) for name, label in lungs.items()}
    density, regions = lung_regions_from_histogram(lung_rows, values, bands, voxel_volume_ml)
    lung_hist = sum((h.sum(axis=0) for h, _ in lung_rows.values()),
                    np.zeros(values.size, np.int64))
    lung_hu = percentile_stand_in(values.astype(np.float32), lung_hist, PERC15_Q)
    return (counts, present, (values, per_label), boxes, centres, lung_hu, density, regions)


#: The percentile of the lung HU reported as Perc15.
PERC15_Q = 15.0
#: Ranks kept exact on each side of a percentile's rank by :func:`percentile_stand_in` (far
#: more than the rounding of NumPy's float rank, relative 1e-7 of the count).
_RANK_MARGIN = 1024


def percentile_stand_in(values: np.ndarray, hist: np.ndarray, q: float) -> np.ndarray:
    """A short-cut array whose ``numpy.percentile(x, q)`` is that of the histogram's data.

    ``numpy.percentile`` (method ``linear``) reads two order statistics of its input (ranks
    ``floor((n - 1) q / 100)`` and the next) and interpolates with a weight that depends on
    ``n`` and ``q`` only. This returns an array of the same length, dtype and sorted order as
    the data, equal to it on the ranks within :data:`_RANK_MARGIN` of that rank and clamped
    to the values there outside: the same two order statistics, the same weight, the same
    result bit for bit, without expanding every value (``numpy.repeat`` of all values would
    give the same result; the clamped runs make ``numpy.partition``'s work lighter).

    Parameters
    ----------
    values : numpy.ndarray
        Sorted distinct values ``(m,)`` in the dtype the percentile is taken in (float32 for
        Perc15, as the per-voxel code did).
    hist : numpy.ndarray
        Integer counts ``(m,)`` of each value.
    q : float
        Percentile (0..100).

    Returns
    -------
    numpy.ndarray
        ``hist.sum()`` values of ``values.dtype``, sorted (empty when the histogram is).
    """
    hist = np.asarray(hist, np.int64)
    n = int(hist.sum())
    if n == 0:
        return np.zeros(0, values.dtype)
    rank = int(q / 100.0 * (n - 1))
    first, last = max(rank - _RANK_MARGIN, 0), min(rank + _RANK_MARGIN, n - 1)
    cum = np.cumsum(hist)
    lo = int(np.searchsorted(cum, first, side="right"))  # value at rank `first`
    hi = int(np.searchsorted(cum, last, side="right"))  # value at rank `last`
    runs = hist.copy()
    runs[:lo] = 0
    runs[lo] = cum[lo]  # ranks 0 .. cum[lo] - 1: the value at rank `first` (exact from it on)
    runs[hi + 1:] = 0
    runs[hi] = n - (int(cum[hi - 1]) if hi else 0) if hi > lo else n  # up to the last rank
    return np.repeat(values, runs)


def _per_block_passes(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                      lung_ids: dict[str, int], bands: DensityBands, voxel_volume_ml: float
                      ) -> _Passes:
    """The shared passes for every other input (float HU, an accelerator, wide HU ranges).

    Label counts, one (label, HU) histogram of the ids present (integer HU), ``find_objects``
    boxes and the lung voxels gathered per lung (:func:`~medscan.ct.regions.lung_voxels`,
    :func:`~medscan.ct.regions.lung_regions`).
    """
    histogram = None
    integer = np.issubdtype(hu.dtype, np.integer) and hu.size > 0
    if integer and 256 * (int(hu.max()) - int(hu.min()) + 1) <= MAX_ALL_LABEL_BINS:
        values, per_label = label_hu_histogram(hu, labels)  # every id: counts come with it
        counts = per_label.sum(axis=1)
        present = np.flatnonzero(counts[1:]) + 1
        histogram = (values, per_label[present])
    else:
        counts = label_counts(labels)
        present = np.flatnonzero(counts[1:]) + 1
        if integer and present.size:
            histogram = label_hu_histogram(hu, labels, present)
    boxes = ndimage_boxes(labels)
    lungs = {name: (lung_voxels(hu, labels, affine, label, box=boxes[label - 1])
                    if boxes[label - 1] is not None
                    else LungVoxels(np.zeros(0, hu.dtype), np.zeros(0), np.zeros(0)))
             for name, label in lung_ids.items()}
    lung_hu = None
    if any(v.size for v in lungs.values()):
        lung_hu = np.concatenate([v.hu for v in lungs.values() if v.size]).astype(np.float32)
    density, regions = lung_regions(lungs, bands, voxel_volume_ml)
    return counts, present, histogram, boxes, None, lung_hu, density, regions


def _measure_from_histogram(
    names: dict[int, str], counts: np.ndarray, present: np.ndarray,
    histogram: tuple[np.ndarray, np.ndarray] | None, voxel_volume_ml: float, lungs_found: bool,
    lung_hu: np.ndarray | None,
) -> dict[str, Any]:
    """:func:`measure`'s result for integer HU from per-label HU histograms, bit for bit.

    Why the numbers are identical: :func:`measure` accumulates float64 sums of integer HU and
    of their squares; every partial sum is an integer below 2**53 (|HU| < 2**15, fewer than
    2**22 ... 2**30 voxels), so each float64 addition is exact and its sums equal the exact
    integer sums of the histogram, converted once. The mean lung HU (float64 mean of integers)
    and %LAA-950 (a count) follow the same way; Perc15 is taken with ``numpy.percentile`` on the
    same lung values (float32) as before -- another order of the same values, and percentiles
    do not depend on order.
    """
    row = {int(label): r for r, label in enumerate(present)}
    out: dict[str, Any] = {"tissues": {}}
    for label, name in names.items():
        n = int(counts[label])
        stats = {"label": label, "voxels": n, "volume_ml": round(n * voxel_volume_ml, 3)}
        if n and histogram is not None:
            values, hist = histogram
            h = hist[row[label]]
            total = float(int((h * values).sum()))
            total_sq = float(int((h * values * values).sum()))
            mean = total / n
            std = float(np.sqrt(max(total_sq / n - mean * mean, 0.0)))
            stats.update(mean_hu=round(mean, 2), std_hu=round(std, 2))
        else:
            stats.update(mean_hu=None, std_hu=None)
        out["tissues"][name] = stats
    empty = {"voxels": 0, "volume_ml": 0.0}
    left = out["tissues"].get(LUNG_LEFT, empty)
    right = out["tissues"].get(LUNG_RIGHT, empty)
    if not lungs_found or left["voxels"] + right["voxels"] == 0 or histogram is None:
        out.update({k: None for k in LUNG_KEYS})
        return out
    values, hist = histogram
    by_name = {name: i for i, name in names.items()}
    lung_rows = [row[by_name[n]] for n in (LUNG_LEFT, LUNG_RIGHT)
                 if n in by_name and counts[by_name[n]]]
    h = hist[lung_rows].sum(axis=0)
    n = int(h.sum())
    out.update(
        lung_volume_ml=round(n * voxel_volume_ml, 3),
        lung_left_ml=left["volume_ml"],
        lung_right_ml=right["volume_ml"],
        lung_complete=None,  # set by lung_coverage
        mean_lung_hu=round(float(int((h * values).sum())) / n, 2),
        laa950_percent=round(100.0 * int(h[values < -950].sum()) / n, 3),
        perc15_hu=round(float(np.percentile(lung_hu, PERC15_Q,  # type: ignore[arg-type]
                                            overwrite_input=True)), 2),
    )
    return out


def _structures(stats: dict[str, Any], contacts: dict[int, dict[str, float]],
                coverage: dict[str, Any], surfaces: Mapping[str, Any],
                min_contact_cm2: float) -> dict[str, Any]:
    """:func:`structure_stats` plus ``surface_area_mm2`` and ``complete`` per label."""
    for name, entry in stats.items():
        surface = surfaces.get(name)
        entry["surface_area_mm2"] = None if surface is None else round(float(surface.area), 1)
        if entry["voxels"] == 0:
            entry["complete"] = None
        elif name in coverage:  # the lungs: the coverage test's verdict (field of view too)
            entry["complete"] = bool(coverage[name]["complete"])
        else:
            touch = contacts.get(entry["label"], {})
            entry["complete"] = all(a < min_contact_cm2 for a in touch.values())
            entry["contact_cm2"] = touch
    return stats
