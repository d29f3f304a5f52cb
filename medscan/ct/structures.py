"""Per-structure statistics of a label map: volume, HU statistics, centroid, bounding box.

For every label id present (background 0 excluded):

* ``voxels``, ``volume_ml`` (voxels x |det(affine[:3, :3])| / 1000);
* HU ``mean_hu``, ``std_hu`` (population), ``min_hu``, ``max_hu``, ``median_hu``, ``p5_hu``,
  ``p95_hu`` (percentiles with NumPy's default linear interpolation between order statistics);
* ``centroid_lps_mm``: mean of the voxel centres in LPS mm;
* ``bbox_lps_mm``: ``{"min": [x, y, z], "max": [x, y, z]}``, the axis-aligned LPS box of the
  voxel centres (add half a voxel on each side for the box of the voxels' extent).

Integer HU volumes (int16, the loader's usual output) are summarised from one per-label HU
histogram, accumulated slab by slab: exact integer sums and exact order statistics without a
sorted copy of the volume (NumPy/SciPy's per-label functions would need float64 copies and a
sort per label). Float volumes fall back to gathering each label's values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Percentiles reported per structure (key -> q).
PERCENTILES = {"p5_hu": 5.0, "median_hu": 50.0, "p95_hu": 95.0}


def _percentile_from_hist(hist: np.ndarray, values: np.ndarray, q: float) -> float:
    """``numpy.percentile(x, q)`` (method ``linear``) of the data whose histogram is ``hist``."""
    n = int(hist.sum())
    cum = np.cumsum(hist)
    rank = q / 100.0 * (n - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    v_lo = float(values[np.searchsorted(cum, lo, side="right")])
    v_hi = float(values[np.searchsorted(cum, hi, side="right")])
    return v_lo + (v_hi - v_lo) * (rank - lo)


#: Most histogram bins (labels x HU values) :func:`label_hu_histogram` builds for all 256 label
#: ids at once (int64: 64 MiB); beyond it (a very wide HU range) only the ids asked for.
MAX_ALL_LABEL_BINS = 1 << 23


def label_hu_histogram(hu: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None,
                       slab: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per-label histogram of integer HU: one ``numpy.bincount`` pass, slab by slab.

    Parameters
    ----------
    hu : numpy.ndarray
        Integer HU volume ``(z, y, x)``.
    labels : numpy.ndarray
        uint8 label map on the same grid.
    ids : numpy.ndarray, optional
        Label ids (1..255) to count; voxels of other labels are ignored. Default: every id
        0..255 (row ``r`` is label ``r``; no per-voxel selection, the fastest form).
    slab : int
        Slices per step (bounds the temporaries; a few slices keep them in cache).

    Returns
    -------
    values : numpy.ndarray
        int64 HU of the histogram's columns (``hu.min()`` .. ``hu.max()``).
    hist : numpy.ndarray
        int64 ``(len(ids), len(values))``: voxels of ``ids[r]`` with HU ``values[c]``.

    Notes
    -----
    Every statistic of integer data (count, sum, sum of squares, min, max, order statistics)
    follows exactly from its histogram, so this replaces a gather and a sort per label.
    """
    lo, hi = int(hu.min()), int(hu.max())
    width = hi - lo + 1
    values = np.arange(lo, hi + 1, dtype=np.int64)
    if ids is None:
        # flat bin of (label, HU) = label * width + HU - lo, from a 256-entry lookup table
        offset = np.arange(256, dtype=np.int64) * width - lo
        hist = np.zeros(256 * width, np.int64)
        # each bincount returns hist.size bins: slabs at least that many voxels (wide HU ranges)
        plane = max(int(np.prod(labels.shape[1:])), 1)
        slab = max(slab, -(-hist.size // plane))
        for k in range(0, labels.shape[0], slab):
            index = offset[labels[k : k + slab]]
            index += hu[k : k + slab]
            hist += np.bincount(index.ravel(), minlength=hist.size)
        return values, hist.reshape(256, width)
    row = np.full(256, -1, np.int64)
    row[ids] = np.arange(ids.size)
    keep_ids = np.zeros(256, bool)
    keep_ids[ids] = True
    hist = np.zeros(ids.size * width, np.int64)
    for k in range(0, labels.shape[0], slab):
        lab = labels[k : k + slab]
        keep = keep_ids[lab]
        index = row[lab[keep]] * width + (hu[k : k + slab][keep].astype(np.int64) - lo)
        hist += np.bincount(index, minlength=hist.size)
    return values, hist.reshape(ids.size, width)


def _hu_stats_int(hu: np.ndarray, labels: np.ndarray, ids: np.ndarray, slab: int,
                  histogram: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> dict[int, dict[str, float]]:
    """HU statistics per label id from per-label histograms (integer HU)."""
    values, hist = histogram if histogram is not None else label_hu_histogram(
        hu, labels, ids, slab)
    out: dict[int, dict[str, float]] = {}
    for r, label in enumerate(ids):
        h = hist[r]
        n = int(h.sum())
        nz = np.flatnonzero(h)
        total = int((h * values).sum())
        total_sq = int((h * values * values).sum())
        var = (n * total_sq - total * total) / (n * n)  # exact integers until this division
        stats = {"mean_hu": total / n, "std_hu": float(np.sqrt(max(var, 0.0))),
                 "min_hu": float(values[nz[0]]), "max_hu": float(values[nz[-1]])}
        for key, q in PERCENTILES.items():
            stats[key] = _percentile_from_hist(h, values, q)
        out[int(label)] = stats
    return out


def _hu_stats_float(hu: np.ndarray, labels: np.ndarray, ids: np.ndarray, slab: int
                    ) -> dict[int, dict[str, float]]:
    """HU statistics per label id by gathering each label's values (float HU)."""
    out: dict[int, dict[str, float]] = {}
    for label in ids:
        parts = [hu[k : k + slab][labels[k : k + slab] == label]
                 for k in range(0, labels.shape[0], slab)]
        v = np.concatenate(parts).astype(np.float64)
        stats = {"mean_hu": float(v.mean()), "std_hu": float(v.std()),
                 "min_hu": float(v.min()), "max_hu": float(v.max())}
        for key, q in PERCENTILES.items():
            stats[key] = float(np.percentile(v, q))
        out[int(label)] = stats
    return out


def label_counts(labels: np.ndarray, slab: int = 16) -> np.ndarray:
    """Voxels per label id: int64 ``(256,)``, one ``numpy.bincount`` per slab."""
    counts = np.zeros(256, np.int64)
    for k in range(0, labels.shape[0], slab):
        counts += np.bincount(labels[k : k + slab].ravel(), minlength=256)
    return counts


def ndimage_boxes(labels: np.ndarray) -> list[tuple[slice, ...] | None]:
    """Index box of every label id 1..255 (``scipy.ndimage.find_objects``; None if absent)."""
    from scipy import ndimage

    boxes = ndimage.find_objects(labels, max_label=255)
    return boxes


def label_geometry(labels: np.ndarray
                   ) -> tuple[np.ndarray, list[tuple[slice, ...] | None], dict[int, list[float]]]:
    """Voxel count, index box and mean voxel index of every label id, in one pass.

    ``cc3d.statistics`` (connected-components-3d) walks the label map once in C and gives all
    three; it replaces ``numpy.bincount`` + ``scipy.ndimage.find_objects`` + one box-restricted
    mask per label (:func:`label_counts`, :func:`ndimage_boxes`, :func:`_index_moments`).

    Parameters
    ----------
    labels : numpy.ndarray
        uint8 label map ``(z, y, x)`` with more than 255 voxels (cc3d needs every label value
        below the voxel count) and fewer than ``2**32`` (its counts are uint32).

    Returns
    -------
    counts : numpy.ndarray
        int64 ``(256,)`` voxels per label id.
    boxes : list
        Index box ``(z, y, x)`` slices per id 1..255 (None if absent), as
        :func:`ndimage_boxes`.
    centres : dict
        ``{label id: [z, y, x]}`` mean voxel index (float64) of every id 1..255 present.

    Raises
    ------
    ValueError
        When the label map is not 3-D uint8 or its size is outside ``(255, 2**32)``.

    Notes
    -----
    The mean index is bit for bit the exact-integer form ``float(sum of indices) / n`` of
    :func:`_index_moments`: cc3d accumulates the integer indices in float64 (every partial sum
    is an integer below 2**53, so each addition is exact) and divides once by the count.
    """
    import cc3d

    if labels.ndim != 3 or labels.dtype != np.uint8 or not 255 < labels.size < 2**32:
        raise ValueError(f"label_geometry needs a 3-D uint8 map of 256 .. 2**32 voxels, got "
                         f"{labels.dtype} {labels.shape}")
    stats = cc3d.statistics(labels)
    n = len(stats["voxel_counts"])
    counts = np.zeros(256, np.int64)
    counts[:n] = stats["voxel_counts"]
    boxes: list[tuple[slice, ...] | None] = [None] * 255
    centres: dict[int, list[float]] = {}
    for label in np.flatnonzero(counts[1:]) + 1:
        box = stats["bounding_boxes"][label]
        boxes[label - 1] = tuple(slice(int(b.start), int(b.stop)) for b in box)
        centres[int(label)] = [float(c) for c in stats["centroids"][label]]
    return counts, boxes, centres


def row_hu_histogram(hu: np.ndarray, labels: np.ndarray, label_rows: np.ndarray, n_rows: int,
                     lo: int, width: int, box: tuple[slice, ...],
                     splits: tuple[tuple[int, tuple[slice, ...], np.ndarray], ...] = (),
                     slab: int = 4) -> np.ndarray:
    """Voxels per (row, HU) of integer HU: one ``numpy.bincount`` pass over ``box``.

    The row of a voxel is ``label_rows[label]``; for each split ``(label, split_box, grid)``
    the voxels of ``label`` inside ``split_box`` go to row ``label_rows[label] + grid`` (an
    integer grid broadcastable to the split box's shape, e.g. the lung regions of
    :func:`medscan.ct.regions.region_grid`). Compact rows (only the labels present) keep the
    histogram small enough for the cache, which makes the bincount faster than the 256-row
    :func:`label_hu_histogram`.

    Parameters
    ----------
    hu : numpy.ndarray
        Integer HU volume ``(z, y, x)``; every value in ``lo .. lo + width - 1``.
    labels : numpy.ndarray
        uint8 label map on the same grid.
    label_rows : numpy.ndarray
        int64 ``(256,)`` row of each label id (``0 .. n_rows - 1``).
    n_rows : int
        Rows of the histogram.
    lo, width : int
        HU of the first column and number of columns.
    box : tuple of slice
        Index box ``(z, y, x)`` holding every voxel whose row matters (voxels outside it are
        not counted).
    splits : tuple
        ``(label, split_box, grid)``: extra row offsets for the voxels of ``label``;
        ``split_box`` lies inside ``box``.
    slab : int
        Slices per step (bounds the temporaries).

    Returns
    -------
    numpy.ndarray
        int64 ``(n_rows, width)``.
    """
    offset = np.asarray(label_rows, np.int64) * width - lo
    hist = np.zeros(n_rows * width, np.int64)
    zb, yb, xb = box
    for k in range(zb.start, zb.stop, slab):
        k1 = min(k + slab, zb.stop)
        lab = labels[k:k1, yb, xb]
        index = offset[lab]
        index += hu[k:k1, yb, xb]
        for label, (sz, sy, sx), grid in splits:
            z0, z1 = max(k, sz.start), min(k1, sz.stop)
            if z0 >= z1:
                continue
            inner = (slice(z0 - k, z1 - k), slice(sy.start - yb.start, sy.stop - yb.start),
                     slice(sx.start - xb.start, sx.stop - xb.start))
            g = grid[z0 - sz.start : z1 - sz.start] if grid.shape[0] > 1 else grid
            index[inner] += (lab[inner] == label) * (g * width)
        hist += np.bincount(index.ravel(), minlength=hist.size)
    return hist.reshape(n_rows, width)


def _index_moments(labels: np.ndarray, slab: int, counts: np.ndarray | None = None,
                   boxes: list[tuple[slice, ...] | None] | None = None
                   ) -> tuple[np.ndarray, dict[int, tuple[tuple[slice, ...], list[np.ndarray]]]]:
    """Voxel counts per label id, and per label its index box and per-axis projections.

    ``proj[a][t]`` is the number of the label's voxels whose array index along axis ``a``
    (``z, y, x``) is ``box[a].start + t``: enough for exact centroid sums. The boxes come from
    ``scipy.ndimage.find_objects`` (one pass in C); the projections count inside each box only,
    slab by slab: per slice the in-plane counts of the label, summed (integers, exact).
    """
    if counts is None:
        counts = label_counts(labels, slab)
    if boxes is None:
        boxes = ndimage_boxes(labels)
    moments = {}
    for label in np.flatnonzero(counts[1:]) + 1:
        box = boxes[label - 1]
        sub = labels[box]
        nz, ny, nx = sub.shape
        pz = np.zeros(nz, np.int64)
        py = np.zeros(ny, np.int64)
        px = np.zeros(nx, np.int64)
        for k in range(0, nz, slab):
            mask = sub[k : k + slab] == label
            zx = mask.sum(axis=1, dtype=np.int64)  # (slab, x)
            pz[k : k + slab] = zx.sum(axis=1)
            px += zx.sum(axis=0)
            py += mask.sum(axis=(0, 2), dtype=np.int64)
        moments[int(label)] = (box, [pz, py, px])
    return counts, moments


def _geometry_from_moments(labels: np.ndarray, slab: int, counts: np.ndarray | None,
                           boxes: list[tuple[slice, ...] | None] | None
                           ) -> tuple[np.ndarray, list[tuple[slice, ...] | None],
                                      dict[int, list[float]]]:
    """:func:`label_geometry`'s result from :func:`_index_moments` (any label map size)."""
    counts, moments = _index_moments(labels, slab, counts, boxes)
    centres: dict[int, list[float]] = {}
    boxes = [None] * 255
    for label, (box, proj) in moments.items():
        n = int(counts[label])
        # exact integer sums of the indices, one float division
        centres[label] = [float(((np.arange(p.size) + b.start) * p).sum()) / n
                          for p, b in zip(proj, box, strict=True)]
        boxes[label - 1] = box
    return counts, boxes, centres


def _axis_aligned(affine: np.ndarray) -> bool:
    """True when every index axis maps onto one LPS axis (no obliquity)."""
    m = np.abs(np.asarray(affine, np.float64)[:3, :3]) > 1e-9 * np.abs(affine[:3, :3]).max()
    return bool((m.sum(axis=0) == 1).all() and (m.sum(axis=1) == 1).all())


def _lps(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Index points ``(n, 3)`` in ``(i, j, k)`` order -> LPS mm ``(n, 3)``."""
    return ijk @ np.asarray(affine, np.float64)[:3, :3].T + affine[:3, 3]


def _lps_bbox(labels: np.ndarray, affine: np.ndarray, label: int,
              box_zyx: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Exact axis-aligned LPS box of the voxel centres of ``label`` inside ``box_zyx``."""
    if _axis_aligned(affine):
        corners = np.array([[s.start, s.stop - 1] for s in box_zyx[::-1]], np.float64)  # i,j,k
        grid = np.array(np.meshgrid(*corners, indexing="ij")).reshape(3, -1).T
        world = _lps(affine, grid)
        return world.min(axis=0), world.max(axis=0)
    k, j, i = np.nonzero(labels[box_zyx] == label)  # oblique: every voxel centre of the box
    ijk = np.stack([i + box_zyx[2].start, j + box_zyx[1].start, k + box_zyx[0].start], axis=1)
    world = _lps(affine, ijk.astype(np.float64))
    return world.min(axis=0), world.max(axis=0)


def structure_stats(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                    names: dict[int, str], slab: int = 16, *,
                    counts: np.ndarray | None = None,
                    boxes: list[tuple[slice, ...] | None] | None = None,
                    histogram: tuple[np.ndarray, np.ndarray] | None = None,
                    centres: dict[int, list[float]] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Statistics of every label of ``names`` (and of unnamed ids present, as ``label_<id>``).

    Parameters
    ----------
    hu : numpy.ndarray
        HU volume ``(z, y, x)`` (integer or float).
    labels : numpy.ndarray
        uint8 label map on the same grid.
    affine : numpy.ndarray
        4x4 index ``(i, j, k, 1)`` -> LPS mm.
    names : dict
        Label id -> name (a label table); ids with no voxels get zero volume and null stats.
    slab : int
        Slices per step (bounds the temporaries).
    counts : numpy.ndarray, optional
        :func:`label_counts` of ``labels`` when already computed.
    boxes : list, optional
        :func:`ndimage_boxes` of ``labels`` when already computed.
    histogram : tuple, optional
        :func:`label_hu_histogram` of the labels present (integer HU), when already computed.
    centres : dict, optional
        Mean voxel index ``[z, y, x]`` per label present (:func:`label_geometry`), when already
        computed (with ``counts`` and ``boxes`` from the same call).

    Returns
    -------
    dict
        ``{name: {label, voxels, volume_ml, mean_hu, std_hu, min_hu, max_hu, median_hu,
        p5_hu, p95_hu, centroid_lps_mm, bbox_lps_mm}}`` (JSON-safe;
        HU to 0.001, mm to 0.01, mL to 0.001).

    Raises
    ------
    ValueError
        When ``hu`` and ``labels`` differ in shape or the labels are not uint8.
    """
    if hu.shape != labels.shape:
        raise ValueError(f"HU shape {hu.shape} and label shape {labels.shape} differ")
    if labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8, got {labels.dtype}")
    affine = np.asarray(affine, np.float64)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    if centres is None or counts is None or boxes is None:
        counts, boxes, centres = _geometry_from_moments(labels, slab, counts, boxes)
    present = np.flatnonzero(counts[1:]) + 1
    if present.size == 0:
        hu_stats: dict[int, dict[str, float]] = {}
    elif np.issubdtype(hu.dtype, np.integer):
        hu_stats = _hu_stats_int(hu, labels, present, slab, histogram)
    else:
        hu_stats = _hu_stats_float(hu, labels, present, slab)
    all_names = dict(names)
    for label in present:
        all_names.setdefault(int(label), f"label_{int(label)}")
    out: dict[str, dict[str, Any]] = {}
    for label, name in sorted(all_names.items()):
        n = int(counts[label]) if 0 < label < 256 else 0
        entry: dict[str, Any] = {"label": int(label), "voxels": n,
                                 "volume_ml": round(n * voxel_ml, 3)}
        if n == 0:
            entry.update(dict.fromkeys(("mean_hu", "std_hu", "min_hu", "max_hu", "median_hu",
                                        "p5_hu", "p95_hu", "centroid_lps_mm", "bbox_lps_mm")))
            out[name] = entry
            continue
        entry.update({k: round(v, 3) for k, v in hu_stats[label].items()})
        box = boxes[label - 1]  # type: ignore[index]
        centroid = _lps(affine, np.array([centres[int(label)][::-1]]))[0]
        lo, hi = _lps_bbox(labels, affine, label, box)  # type: ignore[arg-type]
        entry["centroid_lps_mm"] = [round(float(c), 2) for c in centroid]
        entry["bbox_lps_mm"] = {"min": [round(float(c), 2) for c in lo],
                                "max": [round(float(c), 2) for c in hi]}
        out[name] = entry
    return out
