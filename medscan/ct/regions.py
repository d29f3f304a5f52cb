"""Lung density per lung and per region: upper/middle/lower thirds and ventral/dorsal halves.

Regions are defined on each lung's own extent in patient space (LPS mm, through the affine, so
a tilted or reoriented volume gives the same regions as an axial one), on voxel centres:

* thirds **by height** along the patient's S axis (LPS z): with ``s_min``/``s_max`` the lowest
  and highest voxel centre of the lung and ``h = s_max - s_min``, ``lower`` is
  ``s < s_min + h/3``, ``middle`` is ``s_min + h/3 <= s < s_min + 2h/3`` and ``upper`` the rest;
* halves along the A-P axis (LPS y, +y is posterior): split at the midpoint
  ``(y_min + y_max) / 2`` of the lung's voxel centres; ``ventral`` is ``y < mid``, ``dorsal``
  the rest.

A voxel centre within :data:`TIE_MM` of a cut belongs to the region above it (upper side, dorsal
side): voxel centres lie on a lattice, so a cut often passes exactly through a row of them, and
the tolerance makes the assignment independent of floating-point rounding. Each voxel of a lung
falls in exactly one third and exactly one half (the two schemes each partition the lung).
The ``total`` entry of each region is the union of both lungs' regions.
Thirds are by height (equal S extent, as issue 14 asks), not by volume: a lung's upper third
is usually smaller than its lower third, which ``percent_of_lung`` shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medscan.ct.density import DensityBands, band_summary

#: The %LAA threshold (HU): low attenuation area below -950 HU (Gevenois et al., AJRCCM 1996).
LAA_HU = -950.0
#: Distance (mm) within which a voxel centre counts as lying on a region cut.
TIE_MM = 1e-6
#: Region names, thirds then halves.
THIRDS = ("upper", "middle", "lower")
HALVES = ("ventral", "dorsal")


@dataclass
class LungVoxels:
    """The voxels of one lung: HU, LPS S (z) and A-P (y) coordinates of their centres (mm)."""

    hu: np.ndarray
    s_mm: np.ndarray
    y_mm: np.ndarray

    @property
    def size(self) -> int:
        """Number of voxels."""
        return int(self.hu.size)


def lung_voxels(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, label: int,
                slab: int = 16, box: tuple[slice, ...] | None = None) -> LungVoxels:
    """Gather the voxels of ``label`` with their LPS S and A-P coordinates.

    Parameters
    ----------
    hu : numpy.ndarray
        HU volume ``(z, y, x)``.
    labels : numpy.ndarray
        Label map on the same grid.
    affine : numpy.ndarray
        4x4 index ``(i, j, k, 1)`` -> LPS mm.
    label : int
        Label id.
    slab : int
        Slices per step (bounds the temporaries).
    box : tuple of slice, optional
        Index box ``(z, y, x)`` holding every voxel of ``label`` (``scipy.ndimage.find_objects``):
        only this box is searched (same voxels, same order).

    Returns
    -------
    LungVoxels
        1-D arrays in array (C) order of the voxels; coordinates float64.
    """
    a = np.asarray(affine, np.float64)
    if box is None:
        box = (slice(0, labels.shape[0]), slice(0, labels.shape[1]), slice(0, labels.shape[2]))
    z0, y0, x0 = (b.start for b in box)
    lab_box, hu_box = labels[box], hu[box]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k0 in range(0, lab_box.shape[0], slab):
        k, j, i = np.nonzero(lab_box[k0 : k0 + slab] == label)
        if k.size == 0:
            continue
        values = hu_box[k0 : k0 + slab][k, j, i]
        k, j, i = k + (k0 + z0), j + y0, i + x0
        s = a[2, 0] * i + a[2, 1] * j + a[2, 2] * k + a[2, 3]
        y = a[1, 0] * i + a[1, 1] * j + a[1, 2] * k + a[1, 3]
        parts.append((values, s, y))
    if not parts:
        return LungVoxels(np.zeros(0, hu.dtype), np.zeros(0), np.zeros(0))
    return LungVoxels(*(np.concatenate(p) for p in zip(*parts, strict=True)))


def region_index(voxels: LungVoxels) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Third (0 upper, 1 middle, 2 lower) and half (0 ventral, 1 dorsal) of every voxel.

    Returns
    -------
    third, half : numpy.ndarray
        uint8 per voxel.
    bounds : dict
        ``s_range_mm`` (lowest, highest voxel centre), ``thirds_at_mm`` (the two cuts),
        ``ap_range_mm`` and ``ap_split_mm`` (LPS y), rounded to 0.01 mm.
    """
    if voxels.size == 0:
        empty = np.zeros(0, np.uint8)
        return empty, empty, {}
    return _cuts(voxels.s_mm, voxels.y_mm, float(voxels.s_mm.min()), float(voxels.s_mm.max()),
                 float(voxels.y_mm.min()), float(voxels.y_mm.max()))


def region_grid(labels: np.ndarray, affine: np.ndarray, label: int,
                box: tuple[slice, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """Region of every voxel of ``label`` inside its box, as a grid, without gathering voxels.

    The same regions as :func:`region_index` on :func:`lung_voxels` (same cuts, same float64
    arithmetic, bit for bit), computed on the index grid of the box: the LPS S and A-P
    coordinates ``a[r, 0] * i + a[r, 1] * j + a[r, 2] * k + a[r, 3]`` are evaluated in the same
    order as :func:`lung_voxels` does per voxel, but only along the axes whose coefficient is
    non-zero (for the others ``a * i`` is a signed zero whose sign does not depend on the index
    ``i >= 0``, so index 0 gives the same bits). An axial volume needs S per slice and A-P per
    row only.

    Parameters
    ----------
    labels : numpy.ndarray
        Label map ``(z, y, x)``.
    affine : numpy.ndarray
        4x4 index ``(i, j, k, 1)`` -> LPS mm.
    label : int
        Label id (present: ``box`` from ``find_objects`` / :func:`~medscan.ct.structures.
        label_geometry`, tight on every axis).
    box : tuple of slice
        Index box ``(z, y, x)`` of the label.

    Returns
    -------
    grid : numpy.ndarray
        int64 ``third * 2 + half`` (third 0 upper, 1 middle, 2 lower; half 0 ventral,
        1 dorsal), broadcastable to the box's shape.
    bounds : dict
        As :func:`region_index`.
    """
    a = np.asarray(affine, np.float64)

    def index(axis: int, coef: float) -> np.ndarray:
        shape = [1, 1, 1]
        if coef == 0:
            return np.zeros(shape, np.int64)
        shape[axis] = box[axis].stop - box[axis].start
        return np.arange(box[axis].start, box[axis].stop, dtype=np.int64).reshape(shape)

    def coordinate(r: int) -> np.ndarray:
        i, j, k = index(2, a[r, 0]), index(1, a[r, 1]), index(0, a[r, 2])
        return a[r, 0] * i + a[r, 1] * j + a[r, 2] * k + a[r, 3]

    s, y = coordinate(2), coordinate(1)
    mask = None

    def extent(c: np.ndarray) -> tuple[float, float]:
        nonlocal mask
        if sum(n > 1 for n in c.shape) <= 1:
            # one varying axis: monotonic in its index, and the box is tight on every axis,
            # so the extreme voxel centres lie on the box's end planes
            return float(c.min()), float(c.max())
        if mask is None:  # oblique: the voxels' own values, in C order as lung_voxels
            mask = labels[box] == label
        values = np.broadcast_to(c, mask.shape)[mask]
        return float(values.min()), float(values.max())

    s_lo, s_hi = extent(s)
    y_lo, y_hi = extent(y)
    third, half, bounds = _cuts(s, y, s_lo, s_hi, y_lo, y_hi)
    return third.astype(np.int64) * 2 + half, bounds


def _cuts(s: np.ndarray, y: np.ndarray, s_lo: float, s_hi: float, y_lo: float, y_hi: float
          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Third and half of each S / A-P coordinate from the lung's extent (see module doc)."""
    h = s_hi - s_lo
    cut_low, cut_high = s_lo + h / 3.0, s_lo + 2.0 * h / 3.0
    third = np.where(s >= cut_high - TIE_MM, 0, np.where(s >= cut_low - TIE_MM, 1, 2))
    mid = (y_lo + y_hi) / 2.0
    half = (y >= mid - TIE_MM).astype(np.uint8)
    bounds = {"s_range_mm": [round(s_lo, 2), round(s_hi, 2)],
              "thirds_at_mm": [round(cut_low, 2), round(cut_high, 2)],
              "ap_range_mm": [round(y_lo, 2), round(y_hi, 2)], "ap_split_mm": round(mid, 2)}
    return third.astype(np.uint8), half, bounds


@dataclass
class _Sums:
    """Sufficient statistics of a voxel group (so groups of both lungs can be merged)."""

    n: int
    hu_sum: float
    laa: int
    bins: np.ndarray

    def __add__(self, other: _Sums) -> _Sums:
        return _Sums(self.n + other.n, self.hu_sum + other.hu_sum, self.laa + other.laa,
                     self.bins + other.bins)


def _sums(hu: np.ndarray, bins: np.ndarray, n_bins: int) -> _Sums:
    return _Sums(int(hu.size), float(hu.sum(dtype=np.float64)),
                 int(np.count_nonzero(hu < LAA_HU)),
                 np.bincount(bins, minlength=n_bins).astype(np.int64))


def _entry(s: _Sums, bands: DensityBands, voxel_volume_ml: float, lung_n: int
           ) -> dict[str, Any]:
    out = band_summary(s.bins, bands, voxel_volume_ml)
    out["percent_of_lung"] = round(100.0 * s.n / lung_n, 3) if lung_n else None
    out["mean_hu"] = round(s.hu_sum / s.n, 2) if s.n else None
    out["laa950_percent"] = round(100.0 * s.laa / s.n, 3) if s.n else None
    return out


def lung_regions(lungs: dict[str, LungVoxels], bands: DensityBands, voxel_volume_ml: float
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Density bands per lung and total, and the regional analysis.

    Parameters
    ----------
    lungs : dict
        ``{lung name: LungVoxels}`` (lungs without voxels may be present, they are skipped).
    bands : DensityBands
        Band definition.
    voxel_volume_ml : float
        Volume of one voxel (mL).

    Returns
    -------
    density : dict
        ``{lung name: band summary, "total": band summary}`` (see
        :func:`medscan.ct.density.band_summary`) plus ``mean_hu`` / ``laa950_percent``.
    regions : dict
        ``{lung name: {region: entry, "bounds": {...}}, "total": {region: entry}}``; an entry is
        a band summary plus ``percent_of_lung`` (of that lung, or of both lungs for total),
        ``mean_hu`` and ``laa950_percent``.
    """
    n_bins = len(bands.entries)
    per_lung: dict[str, tuple[_Sums, dict[str, _Sums], dict[str, Any]]] = {}
    for name, vox in lungs.items():
        if vox.size == 0:
            continue
        bins = bands.bin_index(vox.hu)
        third, half, bounds = region_index(vox)
        parts = {}
        for names, index in ((THIRDS, third), (HALVES, half)):
            for r, region in enumerate(names):
                sel = index == r
                parts[region] = _sums(vox.hu[sel], bins[sel], n_bins)
        per_lung[name] = (_sums(vox.hu, bins, n_bins), parts, bounds)
    return _assemble(per_lung, bands, voxel_volume_ml)


def lung_regions_from_histogram(lungs: dict[str, tuple[np.ndarray, dict[str, Any]]],
                                values: np.ndarray, bands: DensityBands,
                                voxel_volume_ml: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`lung_regions`' result, bit for bit, from per-region HU histograms (integer HU).

    Parameters
    ----------
    lungs : dict
        ``{lung name: (hist, bounds)}`` for the lungs with voxels: ``hist`` int64
        ``(6, len(values))``, row ``third * 2 + half`` (the grid of :func:`region_grid`,
        through :func:`medscan.ct.structures.row_hu_histogram`), ``bounds`` from
        :func:`region_grid`.
    values : numpy.ndarray
        int64 HU of the histogram's columns.
    bands : DensityBands
        Band definition.
    voxel_volume_ml : float
        Volume of one voxel (mL).

    Returns
    -------
    density, regions : dict
        As :func:`lung_regions`.

    Notes
    -----
    Every sum of :func:`lung_regions` follows exactly from a histogram of integer HU: the
    voxel count, the float64 HU sum (each partial sum is an integer below 2**53, so exact and
    equal to the integer sum converted once), the count below -950 HU and the band counts
    (the band of each HU value, weighted by its count).
    """
    n_bins = len(bands.entries)
    band_of_value = bands.bin_index(values)
    laa = values < LAA_HU
    per_lung = {}
    for name, (hist, bounds) in lungs.items():
        def sums(h: np.ndarray) -> _Sums:
            bins = np.zeros(n_bins, np.int64)
            np.add.at(bins, band_of_value, h)
            return _Sums(int(h.sum()), float(int((h * values).sum())), int(h[laa].sum()), bins)

        parts = {region: sums(hist[2 * r] + hist[2 * r + 1]) for r, region in enumerate(THIRDS)}
        parts.update({region: sums(hist[r::2].sum(axis=0)) for r, region in enumerate(HALVES)})
        per_lung[name] = (sums(hist.sum(axis=0)), parts, bounds)
    return _assemble(per_lung, bands, voxel_volume_ml)


def _assemble(per_lung: dict[str, tuple[_Sums, dict[str, _Sums], dict[str, Any]]],
              bands: DensityBands, voxel_volume_ml: float
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The density and regions blocks from each lung's sums (whole, per region, bounds)."""
    density: dict[str, Any] = {}
    regions: dict[str, Any] = {}
    lung_sums: list[_Sums] = []
    region_sums: dict[str, list[_Sums]] = {r: [] for r in (*THIRDS, *HALVES)}
    for name, (whole, parts, bounds) in per_lung.items():
        lung_sums.append(whole)
        density[name] = _entry(whole, bands, voxel_volume_ml, whole.n)
        per: dict[str, Any] = {}
        for region in (*THIRDS, *HALVES):
            region_sums[region].append(parts[region])
            per[region] = _entry(parts[region], bands, voxel_volume_ml, whole.n)
        per["bounds"] = bounds
        regions[name] = per
    if lung_sums:
        total = sum(lung_sums[1:], lung_sums[0])
        density["total"] = _entry(total, bands, voxel_volume_ml, total.n)
        regions["total"] = {r: _entry(sum(v[1:], v[0]), bands, voxel_volume_ml, total.n)
                            for r, v in region_sums.items()}
    return density, regions
