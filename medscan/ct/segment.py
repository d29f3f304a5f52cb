"""Body, tissue and lung segmentation of a CT volume (classic threshold method).

The method (after Hu S., Hoffman E.A., Reinhardt J.M., "Automatic lung segmentation for accurate
quantitation of volumetric X-ray CT images", IEEE Trans Med Imaging 2001;20:490-8):

1. **Body**: voxels above ``body_threshold_hu`` (-500), the largest 6-connected component (the
   table, blankets and padding are separate components), holes filled slice by slice and in 3-D.
   Everything after this works inside the body's bounding box.
2. **Tissues**: inside the body, each voxel gets the label of its HU band
   (:class:`~medscan.ct.tissues.TissueTable`).
3. **Lung candidates**: voxels below ``lung_threshold_hu`` (-320) inside the filled body (so the
   outside air is excluded), 6-connected components of at least ``lung_min_ml`` whose median HU
   is above ``gas_median_hu`` (-950; pure gas such as bowel gas is rejected). When the body
   touches an in-plane image edge, air inside the body's slice-wise convex hull that reaches
   that edge is searched too (a lung cut open by the field of view: :func:`_with_edge_air`).
4. **Airways**: the trachea is found on the upper slices as a small air region near the body's
   left-right centre and followed down slice by slice (2-D components of the candidates that
   overlap the airway above and stay smaller than ``trachea_area_cm2``; a branch that grows
   larger has entered a lung and is dropped) to ``bronchi_mm`` below the carina. The trachea
   and main bronchi are removed with a one-voxel in-plane rim. (A 3-D region grow below an air
   threshold was tried first: on the RICORD series the lumen, about -930 HU, and the
   parenchyma, about -850 HU, are too close for any threshold to stop it leaking.)
5. **Left / right**: the two largest remaining components, on opposite sides of the body's
   midline, are the lungs; a single component spanning both sides (lungs touching at the
   anterior or posterior junction) is split by eroding until it falls apart and growing the two
   cores back inside the component (geodesic dilation, alternating).
6. **Vessels and holes**: per lung, a closing of ``closing_mm`` and a slice-wise hole fill.
   Patient left is +x in LPS: the lung whose centroid has the larger LPS x is ``lung_left``.

Everything runs on the :class:`~medscan.backend.Backend` arrays (NumPy or CuPy).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medscan.backend import Backend, get_backend
from medscan.ct.ops import (
    bbox,
    binary_closing_mm,
    block_factors,
    block_mean,
    component_sizes,
    convex_hull_2d,
    dilate,
    erode,
    fill_holes_2d,
    fill_holes_3d,
    largest_component,
    refine_mask,
    select_labels,
)
from medscan.ct.orient import canonical_reorientation
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, TissueTable
from medscan.defaults import segment_defaults
from medscan.volume import Finding, Volume

#: Defaults of :class:`SegmentParams`: the ``segment`` section of ``conf/segment.yaml``.
_YAML = segment_defaults("segment")


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of :func:`segment` (the ``segment`` section of ``conf/segment.yaml``).

    Field defaults are read from that file (:mod:`medscan.defaults`), never repeated here.

    Attributes
    ----------
    body_threshold_hu : float
        Body = largest component above this (HU).
    body_opening_mm : float
        Radius of the in-plane opening that detaches clothes and blankets (mm; 0 = none).
    lung_threshold_hu : float
        Lung candidates = voxels below this inside the body (HU).
    lung_min_ml : float
        Smallest component kept as a lung candidate (mL).
    gas_median_hu : float
        Candidates whose median HU is below this are gas (bowel, stomach), not lung.
    bronchi_mm : float
        How far below the carina the main bronchi are followed (mm).
    airway_search_mm : float
        Depth below the top of the lung candidates searched for the trachea (mm).
    trachea_max_offset_mm : float
        Largest left-right distance of the trachea from the body's centre (mm).
    trachea_area_cm2 : tuple of float
        Accepted cross-section area of the trachea (cm²).
    bronchus_min_cm2 : float
        Smallest cross-section of a main bronchus on the top slice of a scan that starts
        inside the lungs (cm²).
    bronchi_max_offset_mm : float
        Largest left-right distance of a main bronchus from the body's centre there (mm).
    airway_max_hu : float
        A main bronchus seed's median HU is below this (lumen air; parenchyma is denser).
    closing_mm : float
        Radius of the closing that fills vessels at the lung border (mm).
    split_max_erosions : int
        Most erosion steps tried to separate touching lungs.
    min_lung_fraction : float
        A second lung must hold at least this share of the two lungs' voxels.
    lungs_min_total_ml : float
        Less air-containing tissue than this in all candidates is no lungs (head CT) (mL).
    work_mm : float
        Voxel size (mm) of the block-averaged grid the body and lung masks are found on;
        their borders are then refined at full resolution (0 = full resolution throughout).
    metal_min_ml : float
        Metal (the ``metal`` band of the tissue table) inside the body from this volume (mL)
        on gives a ``metal`` finding.
    """

    body_threshold_hu: float = _YAML["body_threshold_hu"]
    body_opening_mm: float = _YAML["body_opening_mm"]
    lung_threshold_hu: float = _YAML["lung_threshold_hu"]
    lung_min_ml: float = _YAML["lung_min_ml"]
    gas_median_hu: float = _YAML["gas_median_hu"]
    bronchi_mm: float = _YAML["bronchi_mm"]
    airway_search_mm: float = _YAML["airway_search_mm"]
    trachea_max_offset_mm: float = _YAML["trachea_max_offset_mm"]
    trachea_area_cm2: tuple[float, float] = tuple(_YAML["trachea_area_cm2"])  # type: ignore
    bronchus_min_cm2: float = _YAML["bronchus_min_cm2"]
    bronchi_max_offset_mm: float = _YAML["bronchi_max_offset_mm"]
    airway_max_hu: float = _YAML["airway_max_hu"]
    closing_mm: float = _YAML["closing_mm"]
    split_max_erosions: int = _YAML["split_max_erosions"]
    min_lung_fraction: float = _YAML["min_lung_fraction"]
    lungs_min_total_ml: float = _YAML["lungs_min_total_ml"]
    work_mm: float = _YAML["work_mm"]
    metal_min_ml: float = _YAML["metal_min_ml"]

    @classmethod
    def from_config(cls, cfg: Any) -> SegmentParams:
        """Build from a mapping; unknown keys raise ``TypeError``."""
        values = dict(cfg or {})
        if "trachea_area_cm2" in values:
            values["trachea_area_cm2"] = tuple(float(v) for v in values["trachea_area_cm2"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        d = asdict(self)
        d["trachea_area_cm2"] = list(self.trachea_area_cm2)
        return d


@dataclass
class Segmentation:
    """Result of :func:`segment`.

    Attributes
    ----------
    labels : numpy.ndarray
        uint8 label map ``(z, y, x)`` on the volume's grid (host memory).
    lungs_found : bool
        True when at least one lung was found.
    reason : str
        Why no lungs were found (empty when they were).
    findings : list of Finding
        Segmentation observations (trachea found or not, lungs split, ...).
    timings_s : dict
        Seconds per step.
    """

    labels: np.ndarray
    lungs_found: bool
    reason: str = ""
    findings: list[Finding] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.times: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(self.times.get(name, 0.0) + now - self.t, 4)
        self.t = now


def segment(
    volume: Volume,
    tissues: TissueTable,
    params: SegmentParams | None = None,
    be: Backend | None = None,
) -> Segmentation:
    """Segment body tissues and the left and right lungs, whatever the stored orientation.

    The volume is first brought to the canonical orientation (axial slices, axes toward head,
    back and patient left; :func:`medscan.ct.orient.canonical_reorientation`) by transposes
    and flips only, segmented there, and the label map is mapped back to the stored grid. The
    result in LPS mm therefore does not depend on how the voxels were stored (axial, coronal,
    sagittal, rows or slices in either direction).

    Parameters
    ----------
    volume : Volume
        HU volume (int16 or float32) with its LPS affine.
    tissues : TissueTable
        HU bands and label ids.
    params : SegmentParams, optional
        Thresholds and sizes (defaults: :class:`SegmentParams`).
    be : Backend, optional
        Array backend (default: CPU).

    Returns
    -------
    Segmentation
        Label map (uint8, host memory, on the stored grid) and findings. A volume without
        lungs (e.g. a head CT) gives ``lungs_found=False`` and a reason, with the tissue
        labels still filled in.
    """
    reo = canonical_reorientation(volume.affine)
    if reo.identity:
        return _segment_canonical(volume, tissues, params, be)
    canonical = Volume(
        hu=np.ascontiguousarray(reo.to_canonical(volume.hu)),
        affine=reo.canonical_affine(volume.affine, volume.shape),
        case_id=volume.case_id,
    )
    seg = _segment_canonical(canonical, tissues, params, be)
    seg.labels = np.ascontiguousarray(reo.to_stored(seg.labels))
    seg.findings.insert(0, Finding(
        "reoriented", "info",
        f"voxels stored as {reo.stored_plane} slices (axes {reo.perm}, flips {reo.flips}); "
        "segmented as axial slices after a lossless transpose/flip, labels mapped back",
        details={"perm": list(reo.perm), "flips": list(reo.flips),
                 "stored_plane": reo.stored_plane},
    ))
    return seg


def _segment_canonical(
    volume: Volume,
    tissues: TissueTable,
    params: SegmentParams | None = None,
    be: Backend | None = None,
) -> Segmentation:
    """Segment body tissues and the left and right lungs of a canonical-orientation volume.

    Parameters
    ----------
    volume : Volume
        HU volume (int16 or float32) with its LPS affine.
    tissues : TissueTable
        HU bands and label ids.
    params : SegmentParams, optional
        Thresholds and sizes (defaults: :class:`SegmentParams`).
    be : Backend, optional
        Array backend (default: CPU).

    Returns
    -------
    Segmentation
        Label map (uint8, host memory) and findings. A volume without lungs (e.g. a head CT)
        gives ``lungs_found=False`` and a reason, with the tissue labels still filled in.
    """
    params = params or SegmentParams()
    be = be or get_backend("cpu")
    xp = be.xp
    clock = _Clock()
    findings: list[Finding] = []
    voxel_ml = volume.voxel_volume_ml

    hu = be.asarray(volume.hu)
    factors = block_factors(volume.spacing, params.work_mm)
    low_spacing = tuple(s * f for s, f in zip(volume.spacing, factors, strict=False))
    low_affine = volume.affine.copy()
    low_affine[:3, :3] = volume.affine[:3, :3] * np.array(factors[::-1], float)[None, :]
    low_affine[:3, 3] = volume.affine[:3, :3] @ ((np.array(factors[::-1], float) - 1) / 2) + (
        volume.affine[:3, 3]
    )
    low_ml = voxel_ml * float(np.prod(factors))
    hu_low = block_mean(be, hu, factors)
    clock.lap("downsample")

    # 1. body (low resolution), holes filled slice-wise and in 3-D
    dense = hu_low > params.body_threshold_hu
    if params.body_opening_mm > 0:
        # in-plane opening: detaches clothes, blankets and thin table parts from the skin
        r = [max(round(params.body_opening_mm / s), 1) for s in low_spacing[1:]]
        size = (1, 2 * r[0] + 1, 2 * r[1] + 1)
        dense = dilate(be, erode(be, dense, size), size) & dense
    body_low = largest_component(be, dense, 6, overwrite=True)
    del dense
    box_low = bbox(be, body_low, (0, 1, 1))
    if box_low[0].stop == 0:
        return Segmentation(
            labels=np.zeros(volume.shape, dtype=np.uint8),
            lungs_found=False,
            reason=f"no voxel above the body threshold ({params.body_threshold_hu:g} HU)",
            findings=findings,
            timings_s=clock.times,
        )
    body_low = fill_holes_3d(be, fill_holes_2d(be, body_low[box_low]))
    hu_low = hu_low[box_low]
    box = tuple(slice(b.start * f, b.stop * f) for b, f in zip(box_low, factors, strict=False))
    hu_c = hu[box]
    clock.lap("body")

    # 3.-6. lungs on the low-resolution grid (air cut open by the image edge included)
    lung_space = _with_edge_air(be, body_low, hu_low, box, hu.shape, params)
    lungs = _segment_lungs(be, hu_low, lung_space, low_affine, box_low, low_spacing, low_ml,
                           params, findings, clock)
    del lung_space
    del hu_low

    # full resolution, inside the body's box: body border refined by the threshold
    body = refine_mask(be, body_low, factors, hu_c > params.body_threshold_hu, overwrite=True)
    # the threshold in the border band can pick up bits of a sheet or pad lying within a
    # working voxel of the skin: keep only what is connected to the body
    body = largest_component(be, body, 6, overwrite=True)
    clock.lap("body_refine")

    # 2. tissue bands inside the body (one table look-up per voxel, into the output array)
    labels_full = xp.zeros(hu.shape, dtype=np.uint8)
    labels = labels_full[box]
    lut = be.asarray(tissues.int16_lut())
    for k in range(0, hu_c.shape[0], 16):  # slab by slab: no whole-volume index temporaries
        part = hu_c[k : k + 16]
        if part.dtype != xp.int16:
            part = xp.clip(xp.floor(part), -32768, 32767).astype(xp.int16)
        labels[k : k + 16] = xp.take(lut, part.view(xp.uint16))  # take: faster than lut[...]
    labels *= body
    clock.lap("tissue_bands")
    _metal_finding(be, labels, hu_c, tissues, voxel_ml, params, findings)

    if lungs is None:
        reason = next((f.message for f in findings if f.code == "no_lungs"), "no lungs found")
        lungs_found = False
    else:
        right_id = tissues[LUNG_RIGHT].label
        for name, low in zip((LUNG_RIGHT, LUNG_LEFT), lungs, strict=True):
            lbox = bbox(be, low, (1, 1, 1))
            if lbox[0].stop == 0:
                continue
            fbox = tuple(slice(b.start * f, b.stop * f) for b, f in
                         zip(lbox, factors, strict=True))
            cond = hu_c[fbox] < params.lung_threshold_hu
            cond &= body[fbox]
            full = refine_mask(be, low[lbox], factors, cond, overwrite=True)
            full = fill_holes_2d(be, full)
            sub = labels[fbox]
            full &= sub != right_id  # the slice-wise fill never takes the other lung's voxels
            sub[full] = tissues[name].label
            del full
        lungs_found = True
        reason = ""
        clock.lap("lung_refine")
    out = be.asnumpy(labels_full)
    clock.lap("assemble")
    return Segmentation(
        labels=out, lungs_found=lungs_found, reason=reason, findings=findings,
        timings_s=clock.times,
    )


def _with_edge_air(
    be: Backend, body: Any, hu: Any, box: tuple[slice, ...], full_shape: tuple[int, ...],
    p: SegmentParams,
) -> Any:
    """The body plus air inside its slice-wise convex outline that reaches a cut image edge.

    A lung cut open by the image edge (a field of view smaller than the chest) is joined to
    the outside air there, so it is no hole of the body and the hole fill leaves it out. When
    the body touches an in-plane edge of the image, air (below ``lung_threshold_hu``) that lies
    inside the convex hull of the body's slice (:func:`medscan.ct.ops.convex_hull_2d`, the
    pixels of scikit-image's ``convex_hull_image``) and reaches
    that edge is added to the region searched for lungs (only there: tissue labels still use
    the body). Outside air that this lets in is pure gas (median below ``gas_median_hu``) and
    is rejected with the other gas regions; the lung keeps its contact with the edge, so the
    coverage check reports it incomplete.
    """
    # ``box`` is the body's box in full-resolution indices (a multiple of the block size)
    at_edge = [box[1].start == 0, box[1].stop >= full_shape[1],
               box[2].start == 0, box[2].stop >= full_shape[2]]
    if not any(at_edge):
        return body
    from scipy import ndimage

    body_h = be.asnumpy(body)
    air = be.asnumpy(hu < p.lung_threshold_hu) & ~body_h
    out = body_h.copy()
    for k in range(body_h.shape[0]):
        if not _hull_may_reach_edge_air(body_h[k], air[k], at_edge):
            continue
        extra = convex_hull_2d(body_h[k]) & air[k]
        lab, n = ndimage.label(extra)
        if n == 0:
            continue
        edge_ids = set()
        for cut, line in zip(at_edge, (lab[0], lab[-1], lab[:, 0], lab[:, -1]), strict=True):
            if cut:
                edge_ids.update(int(i) for i in np.unique(line) if i)
        if edge_ids:
            out[k] |= np.isin(lab, sorted(edge_ids))
    return be.asarray(out)


def _hull_may_reach_edge_air(body: np.ndarray, air: np.ndarray, at_edge: list[bool]) -> bool:
    """False when no air pixel of a cut edge line can lie in the body slice's convex hull.

    The hull's pixels lie inside the body's bounding box, so a cut line (first / last row,
    first / last column) can hold a hull pixel only where the body itself touches that line,
    and only between the body's extremes along it; without an air pixel there no edge-air
    component exists and the hull need not be computed (58 of 64 slices of lungdx-a0001).
    """
    rows = np.flatnonzero(body.any(axis=1))
    if rows.size == 0:
        return False
    cols = np.flatnonzero(body.any(axis=0))
    lines = ((body[0], air[0], cols), (body[-1], air[-1], cols),
             (body[:, 0], air[:, 0], rows), (body[:, -1], air[:, -1], rows))
    return any(cut and b.any() and a[extent[0] : extent[-1] + 1].any()
               for cut, (b, a, extent) in zip(at_edge, lines, strict=True))


def _metal_finding(
    be: Backend, labels: Any, hu: Any, tissues: TissueTable, voxel_ml: float,
    p: SegmentParams, findings: list[Finding],
) -> None:
    """Append a ``metal`` finding when the body holds metal (the tissue table's metal band)."""
    names = [t.name for t in tissues.all]
    if "metal" not in names:
        return
    metal = tissues["metal"]
    # counted slab by slab: a whole-box boolean temporary (60 MB on a chest CT, nearly always
    # all False) cost 0.1 s in first-touch page faults alone
    n = sum(int(be.xp.count_nonzero(labels[k : k + 16] == metal.label))
            for k in range(0, labels.shape[0], 16))
    ml = n * voxel_ml
    if n == 0 or ml < p.metal_min_ml:
        return
    peak = float(be.xp.max(hu[labels == metal.label]))
    findings.append(Finding(
        "metal", "warning",
        f"{ml:.2f} mL of metal inside the body (>= {metal.hu_min:g} HU, up to {peak:.0f} HU: "
        "implant, wire, rod or dense foreign body), labelled metal, not bone; metal streaks "
        "can bias HU values and tissue volumes nearby",
        details={"ml": round(ml, 3), "max_hu": round(peak, 1), "hu_min": metal.hu_min},
    ))


def _world_x(affine: np.ndarray, box: tuple[slice, ...], centroid_zyx: np.ndarray) -> float:
    """LPS x (mm) of a crop-relative (z, y, x) index."""
    offset = np.array([s.start for s in box], float)
    p = (np.asarray(centroid_zyx, float) + offset)[::-1]
    return float(affine[0, :3] @ p + affine[0, 3])


def _centroid(be: Backend, mask: Any) -> np.ndarray:
    """(z, y, x) mean index of a mask (cheap: from the three projections)."""
    xp = be.xp
    # the voxel counts per index of each axis, from one pass for z and one for (y, x): the
    # same integers as ``count_nonzero(mask, axis=<other two>)`` per axis (three passes)
    nz = mask.shape[0]
    per_slice = xp.count_nonzero(mask.reshape(nz, -1), axis=1)
    plane = xp.sum(mask.view(xp.uint8), axis=0, dtype=xp.uint16 if nz < 65536 else xp.int64)
    out = []
    for counts in (per_slice, xp.sum(plane, axis=1, dtype=xp.int64),
                   xp.sum(plane, axis=0, dtype=xp.int64)):
        counts = be.asnumpy(counts).astype(np.float64)
        total = counts.sum()
        out.append(float((counts * np.arange(counts.size)).sum() / total) if total else np.nan)
    return np.array(out)


def _superior_axis_sign(affine: np.ndarray) -> int | None:
    """+1/-1 when the slice axis runs toward head/feet (axial stack), else None."""
    col = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    if abs(col[2]) < 0.7:
        return None
    return 1 if col[2] > 0 else -1


def _segment_lungs(
    be: Backend,
    hu: Any,
    body: Any,
    affine: np.ndarray,
    box: tuple[slice, ...],
    spacing: tuple[float, float, float],
    voxel_ml: float,
    p: SegmentParams,
    findings: list[Finding],
    clock: _Clock,
) -> tuple[Any, Any] | None:
    """Right and left lung masks on the crop, or None (reason appended to ``findings``)."""
    xp = be.xp
    cand = body & (hu < p.lung_threshold_hu)
    labels, n = be.label(cand, 6)
    sizes = component_sizes(be, labels, n)
    sizes[0] = 0
    min_vox = p.lung_min_ml / voxel_ml
    keep = np.zeros(n + 1, dtype=bool)
    gas = []
    for i in np.flatnonzero(sizes >= min_vox):
        med = float(xp.median(hu[labels == int(i)]))
        if med < p.gas_median_hu:
            gas.append(round(sizes[i] * voxel_ml, 1))
        else:
            keep[i] = True
    clock.lap("lung_candidates")
    if not keep.any():
        msg = (
            f"no lungs: no air-containing region of at least {p.lung_min_ml:g} mL below "
            f"{p.lung_threshold_hu:g} HU inside the body (largest: "
            f"{sizes.max() * voxel_ml:.1f} mL)"
        )
        if gas:
            msg += f"; gas-only regions rejected (mL): {gas}"
        findings.append(Finding("no_lungs", "error", msg))
        return None
    total_ml = float(sizes[keep].sum()) * voxel_ml
    if total_ml < p.lungs_min_total_ml:
        findings.append(
            Finding(
                "no_lungs",
                "error",
                f"no lungs: the air-containing regions inside the body hold {total_ml:.1f} mL, "
                f"less than {p.lungs_min_total_ml:g} mL (not a chest CT?)",
            )
        )
        return None
    cand = select_labels(be, labels, keep[1:])
    del labels

    airway = _airways(be, hu, cand, body, affine, box, spacing, voxel_ml, p, findings)
    clock.lap("airways")
    if airway is not None:
        rim = dilate(be, airway, (1, 3, 3))
        cand &= ~rim
        del rim

    labels, n = be.label(cand, 6)
    sizes = component_sizes(be, labels, n)
    sizes[0] = 0
    order = [int(i) for i in np.argsort(sizes)[::-1] if sizes[i] >= min_vox]
    if not order:
        findings.append(Finding("no_lungs", "error", "no lungs left after airway removal"))
        return None
    body_cx = _world_x(affine, box, _centroid(be, body))
    first = labels == order[0]
    cx0 = _world_x(affine, box, _centroid(be, first))
    second = None
    for i in order[1:]:
        comp = labels == i
        cx = _world_x(affine, box, _centroid(be, comp))
        if (cx - body_cx) * (cx0 - body_cx) < 0 and sizes[i] >= p.min_lung_fraction * (
            sizes[order[0]] + sizes[i]
        ):
            second = comp
            break
    del labels
    clock.lap("lung_components")

    if second is None:
        parts = _split(be, first, p, spacing, findings)
        if parts is not None:
            first, second = parts
        clock.lap("lung_split")

    lungs = [m for m in (first, second) if m is not None]
    xs = [_world_x(affine, box, _centroid(be, m)) for m in lungs]
    filled = [_close_and_fill(be, m, p, spacing) for m in lungs]
    # A voxel claimed by both closings stays with the lung that held it before closing.
    if len(filled) == 2:
        both = filled[0] & filled[1]
        filled[0] &= ~(both & lungs[1])
        filled[1] &= ~(both & lungs[0])
        filled[1] &= ~filled[0]
    clock.lap("lung_close_fill")

    empty = xp.zeros(hu.shape, dtype=bool)
    if len(filled) == 1:
        side = "left" if xs[0] > body_cx else "right"
        findings.append(
            Finding(
                "one_lung",
                "warning",
                f"only one lung found (patient {side}); the other is absent or not aerated",
            )
        )
        return (empty, filled[0]) if side == "left" else (filled[0], empty)
    if xs[0] > xs[1]:
        return filled[1], filled[0]
    return filled[0], filled[1]


def _airways(
    be: Backend,
    hu: Any,
    cand: Any,
    body: Any,
    affine: np.ndarray,
    box: tuple[slice, ...],
    spacing: tuple[float, float, float],
    voxel_ml: float,
    p: SegmentParams,
    findings: list[Finding],
) -> Any | None:
    """Trachea and main bronchi (mask on the crop) by region growing from the trachea."""
    xp = be.xp
    sign = _superior_axis_sign(affine)
    if sign is None:
        findings.append(
            Finding("airways_skipped", "info", "slices are not axial: airway removal skipped")
        )
        return None
    slices = be.asnumpy(xp.any(cand, axis=(1, 2)))
    present = np.flatnonzero(slices)
    if present.size == 0:
        return None
    order = present[::-1] if sign > 0 else present  # top (head) first
    depth = round(p.airway_search_mm / spacing[0]) + 1
    body_cx = _world_x(affine, box, _centroid(be, body))
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    seed = None
    bronchi = _bronchi_at_top(be, hu, cand, int(order[0]), affine, box, body_cx, pixel_cm2, p)
    if bronchi is not None:
        seed = (int(order[0]), bronchi[0], bronchi[1])
    for k in order[:depth] if seed is None else []:
        lab2, n2 = be.label(cand[k : k + 1], 6)
        if n2 == 0:
            continue
        sizes = component_sizes(be, lab2, n2)
        best = None
        for i in range(1, n2 + 1):
            area = sizes[i] * pixel_cm2
            if not p.trachea_area_cm2[0] <= area <= p.trachea_area_cm2[1]:
                continue
            comp = lab2[0] == i
            cyx = _centroid(be, comp[None])
            cx = _world_x(affine, box, np.array([k, cyx[1], cyx[2]]))
            off = abs(cx - body_cx)
            if off <= p.trachea_max_offset_mm and (best is None or off < best[0]):
                best = (off, comp, area)
        if best is not None:
            seed = (int(k), best[1], best[2])
            break
    if seed is None:
        findings.append(
            Finding(
                "trachea_not_found",
                "info",
                "no trachea on the upper slices (scan starts below it?): airways not removed",
            )
        )
        return None
    k, seed_mask, area = seed
    # follow the trachea down slice by slice: a branch is the 2-D candidate component that
    # overlaps the branch above and stays small; one that grows past the trachea's size has
    # entered a lung and is not followed. Stop ``bronchi_mm`` below the carina.
    max_px = p.trachea_area_cm2[1] / pixel_cm2
    airway = xp.zeros(cand.shape, dtype=bool)
    airway[k] = seed_mask
    current = seed_mask
    below_carina = bronchi is not None and bronchi[2] >= 2
    carina = k if below_carina else None
    step = -sign
    kk = k + step
    while 0 <= kk < cand.shape[0]:
        lab2, n2 = be.label(cand[kk : kk + 1], 6)
        plane = lab2[0]
        ids = be.asnumpy(xp.unique(plane[current]))
        ids = ids[ids > 0]
        if ids.size == 0:
            break
        sizes = component_sizes(be, plane, n2)
        keep_ids = [int(i) for i in ids if sizes[i] <= max_px]
        if not keep_ids:
            break
        new = xp.isin(plane, be.asarray(np.array(keep_ids)))
        if carina is None and len(keep_ids) >= 2:
            carina = kk
        if carina is not None and abs(kk - carina) * spacing[0] > p.bronchi_mm:
            break
        airway[kk] = new
        current = new
        kk += step
    ml = float(xp.count_nonzero(airway)) * voxel_ml
    findings.append(
        Finding(
            "airways",
            "info",
            (f"scan starts below the carina: {bronchi[2]} main bronchi ({area:.1f} cm² on the "
             "top slice) followed over " if below_carina and bronchi is not None else
             f"trachea found ({area:.1f} cm² on its top slice) and followed over ")
            + f"{abs(kk - k) * spacing[0]:.0f} mm"
            + (" past the carina" if carina is not None else "")
            + f"; {ml:.1f} mL of trachea and main bronchi removed",
            details={"ml": round(ml, 2), "carina_found": carina is not None,
                     "below_carina": below_carina},
        )
    )
    return airway


def _bronchi_at_top(
    be: Backend,
    hu: Any,
    cand: Any,
    k: int,
    affine: np.ndarray,
    box: tuple[slice, ...],
    body_cx: float,
    pixel_cm2: float,
    p: SegmentParams,
) -> tuple[Any, float, int] | None:
    """Airway seeds on the top slice ``k`` when the scan starts inside the lungs.

    When the top slice holding lung candidates already cuts a lung wider than a trachea can
    be, the scan started below the lung apices; the airways on that slice (the trachea, or
    both main bronchi when the scan starts below the carina) are the small, dark (median HU
    below ``airway_max_hu``) candidate components within ``bronchi_max_offset_mm`` of the
    body's left-right centre. Returns ``(mask, total area cm², number of parts)`` or None
    (the top of the lungs is in the scan: the usual trachea search applies).
    """
    xp = be.xp
    lab2, n2 = be.label(cand[k : k + 1], 6)
    if n2 == 0:
        return None
    sizes = component_sizes(be, lab2, n2)
    if sizes[1:].max() * pixel_cm2 <= p.trachea_area_cm2[1]:
        return None
    seeds = xp.zeros(cand.shape[1:], dtype=bool)
    parts, area = 0, 0.0
    for i in range(1, n2 + 1):
        a = sizes[i] * pixel_cm2
        if not p.bronchus_min_cm2 <= a <= p.trachea_area_cm2[1]:
            continue
        comp = lab2[0] == i
        if float(xp.median(hu[k][comp])) > p.airway_max_hu:
            continue
        cyx = _centroid(be, comp[None])
        cx = _world_x(affine, box, np.array([k, cyx[1], cyx[2]]))
        if abs(cx - body_cx) <= p.bronchi_max_offset_mm:
            seeds |= comp
            parts += 1
            area += a
    if parts == 0:
        return None
    return seeds, area, parts


def _split(
    be: Backend,
    mask: Any,
    p: SegmentParams,
    spacing: tuple[float, float, float],
    findings: list[Finding],
) -> tuple[Any, Any] | None:
    """Split one component holding both lungs; None when it does not fall apart."""
    xp = be.xp
    box = bbox(be, mask, (1, 1, 1))
    sub = mask[box]
    # erode in-plane only (the junction lines run along the slice axis)
    core = sub
    total = int(xp.count_nonzero(sub))
    for step in range(1, p.split_max_erosions + 1):
        core = erode(be, core, (1, 3, 3))
        labels, n = be.label(core, 6)
        if n < 2:
            continue
        sizes = component_sizes(be, labels, n)
        sizes[0] = 0
        a, b = (int(i) for i in np.argsort(sizes)[::-1][:2])
        if sizes[b] < p.min_lung_fraction * (sizes[a] + sizes[b]):
            continue
        ma, mb = labels == a, labels == b
        del labels
        # grow the two cores back inside the component, one step each in turn
        for _ in range(step + 2):
            ma = dilate(be, ma, (1, 3, 3)) & sub & ~mb
            mb = dilate(be, mb, (1, 3, 3)) & sub & ~ma
        rest = sub & ~ma & ~mb
        left_over = int(xp.count_nonzero(rest))
        if left_over:
            # voxels the cores never reached (thin tips): the side of the cores' midline
            ca, cb = _centroid(be, ma), _centroid(be, mb)
            mid = (ca[2] + cb[2]) / 2.0
            xs = xp.arange(sub.shape[2])[None, None, :]
            a_low = ca[2] < cb[2]
            side_a = (xs < mid) if a_low else (xs >= mid)
            ma |= rest & side_a
            mb |= rest & ~side_a
        out_a = xp.zeros(mask.shape, dtype=bool)
        out_b = xp.zeros(mask.shape, dtype=bool)
        out_a[box] = ma
        out_b[box] = mb
        findings.append(
            Finding(
                "lungs_split",
                "info",
                f"left and right lungs touched; separated after {step} in-plane erosion(s) "
                f"({left_over} of {total} voxels assigned by side)",
            )
        )
        return out_a, out_b
    findings.append(
        Finding(
            "lungs_not_split",
            "warning",
            f"one lung component that does not separate within {p.split_max_erosions} "
            "erosions: treated as one lung",
        )
    )
    return None


def _close_and_fill(
    be: Backend, mask: Any, p: SegmentParams, spacing: tuple[float, float, float]
) -> Any:
    """Closing (vessels at the border) + slice-wise hole fill (vessels inside), per lung."""
    nz = round(p.closing_mm / spacing[0])
    nxy = round(p.closing_mm / min(spacing[1], spacing[2]))
    box = bbox(be, mask, (nz + 1, nxy + 1, nxy + 1))
    sub = binary_closing_mm(be, mask[box], p.closing_mm, spacing)
    sub = fill_holes_2d(be, sub)
    out = be.xp.zeros(mask.shape, dtype=bool)
    out[box] = sub
    return out
