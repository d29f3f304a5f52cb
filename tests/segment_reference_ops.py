"""The mask operations of :mod:`medscan.ct.ops` / :mod:`medscan.ct.segment` as they were
before the issue-15 speed-ups (main at cdb6d7c), kept as the reference the faster versions
must equal voxel for voxel.

:func:`old_ops` maps the names :mod:`medscan.ct.segment` imports to these formulations, so a
test can run the whole ``segment()`` the old way (``monkeypatch.setattr``) and compare labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medscan.backend import Backend
from medscan.ct.ops import component_sizes


def largest_component(be: Backend, mask: Any, connectivity: int = 6, slab: int = 16,
                      overwrite: bool = False) -> Any:
    """Every component of the whole mask counted, the largest kept (ties: lowest id).

    ``slab`` and ``overwrite`` (options of the new version) are ignored.
    """
    labels, n = be.label(mask, connectivity)
    if n == 0:
        return be.xp.zeros(mask.shape, dtype=bool)
    sizes = component_sizes(be, labels, n)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes_2d(be: Backend, mask: Any) -> Any:
    """One labelling call per slice."""
    xp = be.xp
    out = xp.empty_like(mask)
    for k in range(mask.shape[0]):
        labels, n = be.label(~mask[k : k + 1], 6)
        plane = labels[0]
        lut = xp.zeros(n + 1, dtype=bool)
        for face in (plane[0], plane[-1], plane[:, 0], plane[:, -1]):
            lut[face.ravel()] = True
        lut[0] = False
        out[k] = ~lut[plane]
    return out


def fill_holes_3d(be: Backend, mask: Any) -> Any:
    """Background components not on the array border, by a look-up table."""
    labels, n = be.label(~mask, 6)
    lut = be.xp.zeros(n + 1, dtype=bool)
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0],
                 labels[:, :, -1]):
        lut[face.ravel()] = True
    lut[0] = False
    return ~lut[labels]


def dilate(be: Backend, mask: Any, size: tuple[int, int, int]) -> Any:
    """SciPy's separable maximum filter on the uint8 view."""
    return be.ndi.maximum_filter(mask.view(be.xp.uint8), size=size).view(bool)


def erode(be: Backend, mask: Any, size: tuple[int, int, int]) -> Any:
    """SciPy's separable minimum filter on the uint8 view (outside counts as set)."""
    return be.ndi.minimum_filter(mask.view(be.xp.uint8), size=size, mode="nearest").view(bool)


def centroid(be: Backend, mask: Any) -> np.ndarray:
    """``count_nonzero`` over the other two axes, per axis."""
    xp = be.xp
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        counts = be.asnumpy(xp.count_nonzero(mask, axis=other)).astype(np.float64)
        total = counts.sum()
        out.append(float((counts * np.arange(counts.size)).sum() / total) if total else np.nan)
    return np.array(out)


def metal_finding(be, labels, hu, tissues, voxel_ml, p, findings) -> None:
    """The whole-box mask version of ``segment._metal_finding``."""
    from medscan.volume import Finding

    if "metal" not in [t.name for t in tissues.all]:
        return
    metal = tissues["metal"]
    mask = labels == metal.label
    n = int(be.xp.count_nonzero(mask))
    ml = n * voxel_ml
    if n == 0 or ml < p.metal_min_ml:
        return
    peak = float(be.xp.max(hu[mask]))
    findings.append(Finding(
        "metal", "warning",
        f"{ml:.2f} mL of metal inside the body (>= {metal.hu_min:g} HU, up to {peak:.0f} HU: "
        "implant, wire, rod or dense foreign body), labelled metal, not bone; metal streaks "
        "can bias HU values and tissue volumes nearby",
        details={"ml": round(ml, 3), "max_hu": round(peak, 1), "hu_min": metal.hu_min},
    ))


def with_edge_air(be, body, hu, box, full_shape, p) -> Any:
    """``segment._with_edge_air`` with the hull computed on every slice holding body."""
    from scipy import ndimage

    from medscan.ct.ops import convex_hull_2d

    at_edge = [box[1].start == 0, box[1].stop >= full_shape[1],
               box[2].start == 0, box[2].stop >= full_shape[2]]
    if not any(at_edge):
        return body
    body_h = be.asnumpy(body)
    air = be.asnumpy(hu < p.lung_threshold_hu) & ~body_h
    out = body_h.copy()
    for k in range(body_h.shape[0]):
        if not body_h[k].any():
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


def old_ops() -> dict[str, Any]:
    """``{name in medscan.ct.segment: reference function}`` (``ops_module`` names: patched in
    :mod:`medscan.ct.ops` too, where other operations call them)."""
    return {"largest_component": largest_component, "dilate": dilate, "erode": erode,
            "fill_holes_2d": fill_holes_2d, "_centroid": centroid,
            "_metal_finding": metal_finding, "fill_holes_3d": fill_holes_3d,
            "_with_edge_air": with_edge_air}
