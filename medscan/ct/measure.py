"""Measurements from a label map: tissue volumes and HU statistics, lung densitometry.

* volume (mL) = voxel count x |det(affine[:3, :3])| / 1000;
* mean / std HU per label (population std, float64 accumulation);
* lungs (``lung_left`` + ``lung_right``): total, left and right volume, mean lung density
  (mean HU), %LAA-950 (share of lung voxels below -950 HU, in percent) and Perc15 (the
  15th percentile of lung HU, linear interpolation), the standard CT emphysema indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medscan.backend import Backend, get_backend
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, TissueTable

#: Keys of the lung metrics (null when no lungs were found).
LUNG_KEYS = (
    "lung_volume_ml",
    "lung_left_ml",
    "lung_right_ml",
    "mean_lung_hu",
    "laa950_percent",
    "perc15_hu",
)


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
    tissues : TissueTable
        Label ids and names.
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
    ids = [t.label for t in tissues.all]
    lung_ids = (tissues[LUNG_LEFT].label, tissues[LUNG_RIGHT].label)
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
    for t in tissues.all:
        n = count[t.label]
        stats = {"label": t.label, "voxels": n, "volume_ml": round(n * voxel_volume_ml, 3)}
        if n:
            mean = total[t.label] / n
            std = float(np.sqrt(max(total_sq[t.label] / n - mean * mean, 0.0)))
            stats.update(mean_hu=round(mean, 2), std_hu=round(std, 2))
        else:
            stats.update(mean_hu=None, std_hu=None)
        out["tissues"][t.name] = stats
    left = out["tissues"][LUNG_LEFT]
    right = out["tissues"][LUNG_RIGHT]
    if not lungs_found or left["voxels"] + right["voxels"] == 0:
        out.update({k: None for k in LUNG_KEYS})
        return out
    lung = xp.concatenate(lung_values)
    n = int(lung.size)
    out.update(
        lung_volume_ml=round(n * voxel_volume_ml, 3),
        lung_left_ml=left["volume_ml"],
        lung_right_ml=right["volume_ml"],
        mean_lung_hu=round(float(xp.mean(lung, dtype=xp.float64)), 2),
        laa950_percent=round(100.0 * int(xp.count_nonzero(lung < -950)) / n, 3),
        perc15_hu=round(float(xp.percentile(lung.astype(xp.float32), 15.0)), 2),
    )
    return out
