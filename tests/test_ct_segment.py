"""Segmentation on real CT: body, tissue bands, left/right lungs; RICORD padding invariance."""

from __future__ import annotations

import numpy as np
import pytest

from medscan.backend import get_backend
from medscan.ct.ops import block_mean, fill_holes_2d, fill_holes_3d, upsample
from medscan.ct.segment import segment
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, TissueTable, default_tissues
from medscan.dicom import load_path
from medscan.volume import Volume


@pytest.fixture(scope="module")
def tissues() -> TissueTable:
    return default_tissues()


@pytest.fixture(scope="module")
def sample_seg(sample_ct, tissues):
    volume = load_path(sample_ct)
    return volume, segment(volume, tissues)


def lung_ml(volume: Volume, labels: np.ndarray, tissues: TissueTable) -> tuple[float, float]:
    left = np.count_nonzero(labels == tissues[LUNG_LEFT].label) * volume.voxel_volume_ml
    right = np.count_nonzero(labels == tissues[LUNG_RIGHT].label) * volume.voxel_volume_ml
    return left, right


def centroid_x_lps(volume: Volume, mask: np.ndarray) -> float:
    zyx = np.argwhere(mask[::2, ::4, ::4]) * np.array([2, 4, 4])
    return float(volume.world_from_zyx(zyx.mean(axis=0, keepdims=True))[0, 0])


def test_tissue_table_bands(tissues):
    lut = tissues.int16_lut()
    hu = np.array([-3024, -1000, -900, -700, -400, -190, -30, -29, 150, 151, 299, 300, 2000],
                  dtype=np.int16)
    names = [tissues.by_label()[int(v)].name for v in lut[hu.view(np.uint16)]]
    assert names == ["air", "air", "lung", "lung", "other", "fat", "fat", "soft_tissue",
                     "soft_tissue", "other", "other", "bone", "bone"]
    ids = [t.label for t in tissues.all]
    assert len(set(ids)) == len(ids) and 0 not in ids
    assert all(len(t.color) == 3 for t in tissues.all)
    assert all(t.source for t in tissues.bands)  # every band cites its source
    with pytest.raises(ValueError, match="unique"):
        TissueTable(bands=[tissues["air"], tissues["air"]], other=tissues["other"],
                    structures=tissues.structures)


def test_sample_lungs(sample_seg, tissues):
    volume, seg = sample_seg
    assert seg.lungs_found, seg.reason
    labels = seg.labels
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    left, right = lung_ml(volume, labels, tissues)
    assert 800 < left < 3500 and 800 < right < 3500, (left, right)
    # patient left is +x in LPS
    xl = centroid_x_lps(volume, labels == tissues[LUNG_LEFT].label)
    xr = centroid_x_lps(volume, labels == tissues[LUNG_RIGHT].label)
    assert xl > xr + 80
    # outside the body (image corners: air and the table) is background
    assert (labels[:, :20, :20] == 0).all() and (labels[:, -5:, :] == 0).all()
    # lung voxels are mostly aerated, body has soft tissue, fat and bone
    lungs = (labels == tissues[LUNG_LEFT].label) | (labels == tissues[LUNG_RIGHT].label)
    assert np.median(volume.hu[lungs]) < -700
    for name in ("fat", "soft_tissue", "bone"):
        assert np.count_nonzero(labels == tissues[name].label) * volume.voxel_volume_ml > 100
    # the trachea was found and removed: it is not lung
    assert any(f.code == "airways" for f in seg.findings)


def test_trachea_not_labelled_lung(sample_seg, tissues):
    volume, seg = sample_seg
    top = seg.labels[-1]  # the top slice of the sample passes through the trachea
    air = (volume.hu[-1] < -900) & (top > 0)
    assert air.any()
    assert not np.isin(top[air], [tissues[LUNG_LEFT].label, tissues[LUNG_RIGHT].label]).any()


@pytest.mark.slow
def test_all_shared_chest_series(shared_ct, tissues):
    for series in ("lungdx-a0001-chest-5mm", "lungdx-a0002-b70f"):
        volume = load_path(shared_ct / series)
        seg = segment(volume, tissues)
        assert seg.lungs_found, f"{series}: {seg.reason}"
        left, right = lung_ml(volume, seg.labels, tissues)
        assert 800 < left < 4500 and 800 < right < 4500, (series, left, right)
        xl = centroid_x_lps(volume, seg.labels == tissues[LUNG_LEFT].label)
        xr = centroid_x_lps(volume, seg.labels == tissues[LUNG_RIGHT].label)
        assert xl > xr + 80, series


@pytest.mark.slow
def test_ricord_padding_does_not_change_lungs(shared_ct, tissues):
    """-3024 HU padding outside the scan circle vs the same volume padded with -1024."""
    volume = load_path(shared_ct / "ricord-1a-000082-jpegll")
    # the loader maps padding to -1024; put the scanner's -3024 back outside the scan circle
    _nz, ny, nx = volume.shape
    yy, xx = np.mgrid[:ny, :nx]
    outside = (yy - ny / 2 + 0.5) ** 2 + (xx - nx / 2 + 0.5) ** 2 > (nx / 2) ** 2
    padded = volume.hu.copy()
    circle = np.broadcast_to(outside, volume.shape) & (padded == -1024)
    padded[circle] = -3024
    assert np.count_nonzero(padded == -3024) > 1_000_000
    a = segment(volume, tissues)
    b = segment(Volume(hu=padded, affine=volume.affine), tissues)
    for name in (LUNG_LEFT, LUNG_RIGHT):
        ma, mb = a.labels == tissues[name].label, b.labels == tissues[name].label
        dice = 2 * np.count_nonzero(ma & mb) / (np.count_nonzero(ma) + np.count_nonzero(mb))
        assert dice > 0.999, (name, dice)
    left, right = lung_ml(volume, a.labels, tissues)
    assert 1000 < left < 4500 and 1000 < right < 4500


def test_head_ct_has_no_lungs(shared_ct_qa, tissues):
    volume = load_path(shared_ct_qa / "ge-head-tilt-uneven")
    seg = segment(volume, tissues)
    assert not seg.lungs_found
    assert "no lungs" in seg.reason
    assert not np.isin(seg.labels, [tissues[LUNG_LEFT].label, tissues[LUNG_RIGHT].label]).any()
    assert np.count_nonzero(seg.labels == tissues["bone"].label) > 1000  # the skull


def test_hole_filling_and_resampling_ops():
    be = get_backend("cpu")
    ring = np.zeros((3, 9, 9), dtype=bool)
    ring[:, 2:7, 2:7] = True
    ring[:, 4, 4] = False  # a hole in every slice
    ring[1, 4, 4] = True
    filled2 = fill_holes_2d(be, ring)
    assert filled2[:, 4, 4].all()
    closed = np.zeros((5, 7, 7), dtype=bool)
    closed[1:4, 1:6, 1:6] = True
    closed[2, 3, 3] = False  # a 3-D cavity
    assert fill_holes_3d(be, closed)[2, 3, 3]
    open_tube = np.zeros((5, 7, 7), dtype=bool)
    open_tube[:, 1:6, 1:6] = True
    open_tube[:, 3, 3] = False  # open at both ends: not a 3-D hole
    assert not fill_holes_3d(be, open_tube)[2, 3, 3]
    arr = np.arange(4 * 6 * 6, dtype=np.int16).reshape(4, 6, 6)
    low = block_mean(be, arr, (1, 2, 2))
    assert low.shape == (4, 3, 3)
    assert low[0, 0, 0] == pytest.approx(arr[0, :2, :2].mean())
    up = upsample(be, (low > 50).astype(np.uint8), (1, 2, 2), (4, 7, 7))
    assert up.shape == (4, 7, 7) and (up[:, 6, :] == 0).all()
    assert (up[:, :6, :6] == np.repeat(np.repeat(low > 50, 2, 1), 2, 2)).all()


def test_convex_hull_2d_equals_scikit_image(sample_ct):
    """``convex_hull_2d`` (issue 15: row intervals instead of a per-pixel polygon test) gives
    scikit-image's ``convex_hull_image`` pixels: on every slice of the real sample's body at
    full and working resolution, on its lungs (two blobs), and on random sparse/dense masks."""
    import warnings

    from skimage.morphology import convex_hull_image

    from medscan.ct.ops import convex_hull_2d

    hu = load_path(sample_ct).hu
    masks = [hu[k] > t for k in range(hu.shape[0]) for t in (-500, -950)]
    masks += [hu[k, ::2, ::2] > -500 for k in range(hu.shape[0])]
    masks += [(hu[k] < -320) & (hu[k] > -1000) for k in range(0, hu.shape[0], 3)]
    rng = np.random.default_rng(12)
    for _ in range(400):
        shape = tuple(int(n) for n in rng.integers(1, 30, 2))
        masks.append(rng.random(shape) < rng.choice([0.01, 0.05, 0.3, 0.9]))
    masks += [np.eye(7, dtype=bool), np.ones((1, 5), bool), np.zeros((4, 4), bool)]
    for m in masks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-image warns on an empty mask
            ref = convex_hull_image(m)
        np.testing.assert_array_equal(convex_hull_2d(m), ref)
