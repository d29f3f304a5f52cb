"""Body mask and tissue bands on real series: table and sheets outside, metal not bone.

* The CT table (present in the shared series) and a blanket laid over the chest with an air
  gap are not body; an independent check: body voxels farther than 4 mm from the dense core
  (largest component above -200 HU, holes filled, by SciPy) are negligible.
* Metal (>= 3000 HU; spinal rods of 8000 HU put into a real series) is labelled ``metal``,
  raises a ``metal`` finding and does not change bone's mean HU.
"""

from __future__ import annotations

import numpy as np
import pytest
from ct_reference import load_series, segment_series
from scipy import ndimage as ndi

from medscan.ct.measure import measure
from medscan.ct.segment import segment
from medscan.ct.tissues import default_tissues
from medscan.volume import Volume


@pytest.fixture(scope="module")
def tissues():
    return default_tissues()


def dense_core(volume: Volume) -> np.ndarray:
    """Largest component above -200 HU, holes filled slice by slice (SciPy, independent)."""
    lab, _n = ndi.label(volume.hu > -200)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    core = lab == int(np.argmax(sizes))
    return np.stack([ndi.binary_fill_holes(s) for s in core])


def near(mask: np.ndarray, volume: Volume, mm: float) -> np.ndarray:
    r = max(round(mm / volume.spacing[1]), 1)
    return ndi.maximum_filter(mask.view(np.uint8), size=(1, 2 * r + 1, 2 * r + 1)) > 0


@pytest.mark.parametrize("series", [
    "lungdx-a0001-chest-5mm", "lungdx-a0002-b40f",
    pytest.param("ricord-1a-000082-jpegll", marks=pytest.mark.slow),
])
def test_table_is_not_body(series, shared_ct, tissues):
    volume = load_series(str(shared_ct / series))
    seg = segment_series(str(shared_ct / series))
    body = seg.labels > 0
    core_zone = near(dense_core(volume), volume, 4.0)
    ml = volume.voxel_volume_ml
    # dense things outside the patient exist (table, cables: the check can fail) ...
    outside_dense = (volume.hu > -500) & ~core_zone
    assert np.count_nonzero(outside_dense) * ml > 20, series
    # ... and none of them is body
    assert np.count_nonzero(body & ~core_zone) * ml < 1.0, series
    assert not any(f.code == "metal" for f in seg.findings), series


def test_blanket_over_the_chest_is_not_body(shared_ct, tissues):
    """A 2.5 mm sheet (-100 HU) 3 mm above the anterior skin, attached at the flanks."""
    volume = load_series(str(shared_ct / "lungdx-a0001-chest-5mm"))
    body = segment_series(str(shared_ct / "lungdx-a0001-chest-5mm")).labels > 0
    shell = {mm: near(body, volume, mm) for mm in (3.0, 5.5)}  # in-plane, box-shaped
    yy = np.arange(volume.shape[1])[None, :, None]
    y_mid = np.argwhere(body[::4, ::8, ::8])[:, 1].mean() * 8
    sheet = shell[5.5] & ~shell[3.0] & (yy < y_mid)
    bridge = shell[5.5] & ~body & (np.abs(yy - y_mid) < 8 / volume.spacing[1])
    hu = volume.hu.copy()
    hu[sheet | bridge] = -100
    seg = segment(Volume(hu=hu, affine=volume.affine), tissues)
    ml = volume.voxel_volume_ml
    away = sheet & ~near(bridge, volume, 10.0)  # sheet far from where it touches the skin
    assert np.count_nonzero(away) * ml > 100
    assert np.count_nonzero((seg.labels > 0) & away) * ml < 1.0
    gap = shell[3.0] & ~body & (yy < y_mid) & ~near(bridge, volume, 10.0)
    assert np.count_nonzero((seg.labels > 0) & gap) * ml < 1.0  # the air gap is not filled


def test_metal_is_a_band_and_a_finding_not_bone(shared_ct, tissues):
    volume = load_series(str(shared_ct / "lungdx-a0001-chest-5mm"))
    base = segment_series(str(shared_ct / "lungdx-a0001-chest-5mm"))
    bone_id, metal_id = tissues["bone"].label, tissues["metal"].label
    assert not (base.labels == metal_id).any()
    # two 3 mm rods of 8000 HU either side of the spine over 20 slices (spinal fixation)
    nz, ny, nx = volume.shape
    k0, k1 = nz // 2 - 10, nz // 2 + 10
    bone = base.labels[nz // 2] == bone_id
    cx = nx / 2
    ys, _xs = np.nonzero(bone & (np.abs(np.arange(nx) - cx) < 25 / volume.spacing[2])[None, :])
    spine_y = np.median(ys[ys > np.median(np.nonzero(base.labels[nz // 2] > 0)[0])])
    yy, xx = np.mgrid[:ny, :nx]
    rods = np.zeros(volume.shape, dtype=bool)
    for dx_mm in (-15.0, 15.0):
        x0 = cx + dx_mm / volume.spacing[2]
        disk = ((yy - spine_y) * volume.spacing[1]) ** 2 + ((xx - x0) * volume.spacing[2]) ** 2
        rods[k0:k1] |= (disk <= 9.0)[None]
    hu = volume.hu.copy()
    hu[rods] = 8000
    with_rods = Volume(hu=hu, affine=volume.affine)
    seg = segment(with_rods, tissues)
    metal = seg.labels == metal_id
    ml = volume.voxel_volume_ml
    dice = 2 * np.count_nonzero(metal & rods) / (np.count_nonzero(metal) + np.count_nonzero(rods))
    assert dice > 0.95, dice
    (finding,) = [f for f in seg.findings if f.code == "metal"]
    assert finding.details["ml"] == pytest.approx(np.count_nonzero(rods) * ml, rel=0.05)
    assert finding.details["max_hu"] == 8000
    # bone keeps its HU statistics (metal would have raised its mean by ~10%)
    before = measure(volume.hu, base.labels, tissues, ml)["tissues"]["bone"]["mean_hu"]
    after = measure(hu, seg.labels, tissues, ml)["tissues"]["bone"]["mean_hu"]
    assert after == pytest.approx(before, rel=0.03)
    assert not np.isin(seg.labels[rods], [bone_id]).any()
