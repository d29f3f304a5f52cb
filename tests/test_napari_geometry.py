"""The napari world frame (LPS mm, axes S, P, L): pure geometry, no display needed."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from medscan.napari.geometry import (
    layer_transform,
    lps_affine_from_world,
    lps_from_world,
    parse_color,
    reorient_lps,
    restore_orientation,
    world_affine,
    world_from_lps,
)
from medscan.volume import Volume, world_from_zyx


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(rng.uniform(0.4, 5.0, 3))
    affine[:3, 3] = rng.uniform(-300, 300, 3)
    return affine


def test_world_affine_matches_volume_convention():
    """napari's (z, y, x) affine maps an index where Volume.world_from_zyx puts it, reversed."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        lps = _random_affine(rng)
        zyx = rng.uniform(0, 100, size=(20, 3))
        expected = world_from_lps(world_from_zyx(lps, zyx))
        m = world_affine(lps)
        got = zyx @ m[:3, :3].T + m[:3, 3]
        np.testing.assert_allclose(got, expected, atol=1e-9)
        np.testing.assert_allclose(lps_affine_from_world(m), lps, atol=1e-12)


def test_world_is_a_proper_rotation_of_lps():
    """(I, P, L) = (-z, y, x): no mirror, so 3D views and mesh normals keep their handedness."""
    basis = world_from_lps(np.eye(3))
    assert np.linalg.det(basis) == pytest.approx(1.0)
    np.testing.assert_allclose(world_from_lps(np.array([[1.0, 2.0, 3.0]])), [[-3.0, 2.0, 1.0]])
    np.testing.assert_allclose(lps_from_world(world_from_lps(np.eye(3) * 7)), np.eye(3) * 7)


def test_layer_transform_scale_for_axis_aligned_affine_for_tilted():
    lps = np.diag([0.7, 0.7, -2.5, 1.0])  # slices stored head first (z decreasing)
    lps[:3, 3] = (-180.0, -200.0, 50.0)
    kw = layer_transform(lps)
    assert kw == {"scale": (2.5, 0.7, 0.7), "translate": (-50.0, -200.0, -180.0)}
    tilted = lps.copy()
    tilted[1, 2] = 0.4  # gantry tilt: slices shift in y as z advances
    assert set(layer_transform(tilted)) == {"affine"}
    flipped = np.diag([0.7, -0.7, -2.5, 1.0])  # a negative spacing is not a plain scale
    assert set(layer_transform(flipped)) == {"affine"}


@pytest.mark.parametrize("flips", [(False, False, False), (True, True, False), (False, True, True)])
def test_reorient_lps_keeps_every_voxel_in_place(flips):
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16)
    lps = np.diag([0.8, 0.9, 3.0, 1.0])
    lps[:3, 3] = (10.0, -20.0, 30.0)
    # Flip storage along some array axes (z, y, x) and fix the affine so the voxels stay put.
    for axis, flip in enumerate(flips):
        if flip:
            n = data.shape[axis]
            data = np.flip(data, axis=axis)
            col = 2 - axis  # array axis z/y/x is affine column k/j/i
            lps[:3, 3] += lps[:3, col] * (n - 1)
            lps[:3, col] *= -1
    out, new = reorient_lps(data, lps)
    assert np.all(np.diag(world_affine(new))[:3] > 0)
    assert set(layer_transform(new)) == {"scale", "translate"}
    # Same multiset of (world point, value) pairs.
    idx = np.argwhere(np.ones(data.shape, bool))
    pairs_before = zip(world_from_zyx(lps, idx), data.ravel(), strict=True)
    pairs_after = zip(world_from_zyx(new, idx), out.ravel(), strict=True)
    before = {tuple(np.round(w, 6)): v for w, v in pairs_before}
    after = {tuple(np.round(w, 6)): v for w, v in pairs_after}
    assert before == after
    # ... and restore_orientation gives back the original storage order and affine exactly.
    back, back_affine = restore_orientation(out, new, lps)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, lps)


def test_restore_orientation_leaves_a_moved_grid_alone():
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    lps = np.diag([0.8, 0.9, 3.0, 1.0])
    out, new = reorient_lps(data, lps)
    moved = lps.copy()
    moved[:3, 3] += 5.0  # not a flip of the same voxels: keep the layer's own order
    kept, kept_affine = restore_orientation(out, new, moved)
    np.testing.assert_array_equal(kept, out)
    np.testing.assert_allclose(kept_affine, new)


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="needs dcm2niix (apt)")
def test_dcm2niix_volume_lands_axis_aligned(sample_ct, tmp_path):
    """dcm2niix stores rows bottom-up (negative LPS y spacing); reoriented it is a plain scale."""
    subprocess.run(
        ["dcm2niix", "-z", "y", "-f", "vol", "-o", str(tmp_path), str(sample_ct)],
        check=True,
        capture_output=True,
    )
    vol = Volume.from_nifti(tmp_path / "vol.nii.gz")
    assert vol.affine[1, 1] < 0
    data, new = reorient_lps(vol.hu, vol.affine)
    kw = layer_transform(new)
    np.testing.assert_allclose(kw["scale"], vol.spacing, rtol=1e-6)
    # Now the first slice is the most superior and the first row the most anterior.
    assert vol.affine[2, 2] > 0
    nz, ny, _ = vol.shape
    corner_old = world_from_zyx(vol.affine, np.array([[nz - 1, ny - 1, 0]]))
    corner_new = world_from_zyx(new, np.array([[0, 0, 0]]))
    np.testing.assert_allclose(corner_old, corner_new, atol=1e-6)
    np.testing.assert_array_equal(data[0, 0], vol.hu[-1, -1])


def test_parse_color():
    assert parse_color("#ff8000") == pytest.approx((1.0, 128 / 255, 0.0, 1.0))
    assert parse_color([255, 0, 0]) == (1.0, 0.0, 0.0, 1.0)
    assert parse_color([0.5, 0.5, 0.5, 0.2]) == (0.5, 0.5, 0.5, 0.2)
    assert parse_color(None) == (0.8, 0.8, 0.8, 1.0)
    assert parse_color("red") == (1.0, 0.0, 0.0, 1.0)
