"""Storage orientation does not change the segmentation (issue 12).

The same real voxels stored six other ways (axial with flipped rows/slices, coronal, sagittal,
as :class:`Volume` objects and once as real DICOM files written with pydicom) must give the
same labels at every LPS position, hence the same lung volumes.
"""

from __future__ import annotations

import numpy as np
import pytest
from ct_reference import (
    labels_on_grid,
    load_series,
    reoriented,
    segment_series,
    write_resliced_dicom,
)

from medscan.ct.orient import canonical_reorientation
from medscan.ct.segment import segment
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, default_tissues
from medscan.dicom import load_path

#: (perm, flips) of :func:`ct_reference.reoriented`: new array axis a = old axis perm[a].
VARIANTS = [
    ((0, 1, 2), (True, True, False)),   # axial, feet-first slice order, rows bottom-up
    ((1, 0, 2), (False, True, False)),  # coronal slices, rows head to feet
    ((1, 0, 2), (True, False, True)),   # coronal, slices back to front, columns mirrored
    ((2, 0, 1), (False, True, False)),  # sagittal slices, rows head to feet
    ((2, 1, 0), (True, True, True)),    # sagittal, everything reversed, rows/columns swapped
    ((1, 2, 0), (False, False, True)),  # coronal slices with rows and columns swapped
]


@pytest.fixture(scope="module")
def tissues():
    return default_tissues()


def lung_ml(labels: np.ndarray, voxel_ml: float, tissues) -> float:
    ids = [tissues[LUNG_LEFT].label, tissues[LUNG_RIGHT].label]
    return float(np.count_nonzero(np.isin(labels, ids))) * voxel_ml


def test_canonical_reorientation_is_lossless_and_keeps_world_positions(sample_ct):
    volume = load_series(str(sample_ct))
    for perm, flips in VARIANTS:
        other = reoriented(volume, perm, flips)
        reo = canonical_reorientation(other.affine)
        canon = reo.to_canonical(other.hu)
        affine = reo.canonical_affine(other.affine, other.shape)
        # the sample is stored canonically, so canonical = the original array and affine
        np.testing.assert_array_equal(canon, volume.hu)
        np.testing.assert_allclose(affine, volume.affine, atol=1e-9)
        np.testing.assert_array_equal(reo.to_stored(canon), other.hu)
        # and the test helper keeps voxels in place: a few voxels' LPS positions agree
        rng = np.random.default_rng(0)
        old = rng.integers(0, volume.shape, size=(5, 3))
        new = np.empty_like(old)
        for a, src in enumerate(perm):
            n = other.shape[a]
            new[:, a] = n - 1 - old[:, src] if flips[a] else old[:, src]
        np.testing.assert_allclose(other.world_from_zyx(new), volume.world_from_zyx(old))
        np.testing.assert_array_equal(other.hu[tuple(new.T)], volume.hu[tuple(old.T)])
    assert canonical_reorientation(reoriented(volume, *VARIANTS[1]).affine).stored_plane \
        == "coronal"


@pytest.mark.parametrize(
    "series", ["sample", pytest.param("lungdx-a0001-chest-5mm", marks=pytest.mark.slow)])
def test_six_storage_orientations_give_identical_labels(series, sample_ct, shared_ct, tissues):
    folder = sample_ct if series == "sample" else shared_ct / series
    volume = load_series(str(folder))
    base = segment_series(str(folder))
    assert base.lungs_found
    base_ml = lung_ml(base.labels, volume.voxel_volume_ml, tissues)
    for perm, flips in VARIANTS:
        other = reoriented(volume, perm, flips)
        seg = segment(other, tissues)
        assert seg.lungs_found, (perm, flips, seg.reason)
        ml = lung_ml(seg.labels, other.voxel_volume_ml, tissues)
        assert ml == pytest.approx(base_ml, rel=0.005), (perm, flips)
        back = labels_on_grid(volume, other, seg.labels)
        diff = np.count_nonzero(back != base.labels)
        assert diff == 0, (perm, flips, diff)


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_resliced_dicom_series_gives_identical_labels(plane, sample_ct, tissues, tmp_path):
    """Real DICOM files storing the sample as coronal/sagittal slices, read by the loader."""
    volume = load_series(str(sample_ct))
    base = segment_series(str(sample_ct))
    folder = write_resliced_dicom(sample_ct, tmp_path / plane, plane)
    other = load_path(folder)
    assert other.shape != volume.shape  # really stored another way
    assert canonical_reorientation(other.affine).stored_plane == plane
    seg = segment(other, tissues)
    assert any(f.code == "reoriented" for f in seg.findings)
    assert lung_ml(seg.labels, other.voxel_volume_ml, tissues) == pytest.approx(
        lung_ml(base.labels, volume.voxel_volume_ml, tissues), rel=0.005)
    back = labels_on_grid(volume, other, seg.labels)
    assert np.array_equal(back, base.labels), np.count_nonzero(back != base.labels)
