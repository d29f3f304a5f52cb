"""Backend seam: CPU backend behaviour, the GPU-only code paths that can run here, and the
`backend=gpu` refusal on a machine without a GPU.

What can run on these CPU-only machines is run for real: warp's marching cubes on warp's CPU
device (the same kernels the GPU backend launches on CUDA) and the raster-order relabelling
used after cuCIM's label, in NumPy. The CUDA execution itself is covered by the `gpu`-marked
parity tests, which skip here with a reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from medscan import _gpu
from medscan.backend import BackendUnavailable, get_backend, gpu_available

HAS_GPU, NO_GPU_REASON = gpu_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason=f"needs a CUDA GPU: {NO_GPU_REASON}")
BACKENDS = ["cpu", pytest.param("gpu", marks=[pytest.mark.gpu, gpu])]


def _ball_pair(shape=(40, 44, 48)) -> np.ndarray:
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    a = ((z - 20) ** 2 + (y - 14) ** 2 + (x - 14) ** 2) <= 81
    b = ((z - 18) ** 2 + (y - 30) ** 2 + (x - 34) ** 2) <= 64
    return a | b


def test_auto_picks_cpu_without_gpu():
    if HAS_GPU:
        pytest.skip("this machine has a GPU")
    assert get_backend("auto").name == "cpu"


def test_gpu_without_gpu_is_a_clear_one_line_error():
    if HAS_GPU:
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailable) as info:
        get_backend("gpu")
    message = str(info.value)
    assert "backend=gpu needs a CUDA GPU" in message
    assert "\n" not in message


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tpu")


@pytest.mark.parametrize("name", BACKENDS)
def test_label_counts_and_raster_order(name):
    be = get_backend(name)
    mask = _ball_pair()
    labels, n = be.label(be.asarray(mask), connectivity=6)
    labels = be.asnumpy(labels)
    assert n == 2
    assert labels.dtype == np.uint32
    # first foreground voxel in raster order carries id 1
    first = labels.ravel()[np.flatnonzero(mask.ravel())[0]]
    assert first == 1
    assert set(np.unique(labels)) == {0, 1, 2}


def test_raster_order_relabelling_matches_cc3d():
    import cc3d

    rng = np.random.default_rng(7)
    mask = rng.random((20, 30, 30)) > 0.7
    reference, n = cc3d.connected_components(mask, connectivity=6, return_N=True)
    # scramble the ids, as a GPU labeller that is not raster ordered would
    perm = np.concatenate([[0], rng.permutation(np.arange(1, n + 1))])
    scrambled = perm[reference]
    restored = _gpu.raster_order(scrambled, int(n), np)
    np.testing.assert_array_equal(restored, reference)


@pytest.mark.parametrize("name", BACKENDS)
def test_marching_cubes_of_a_ball(name):
    trimesh = pytest.importorskip("trimesh")
    be = get_backend(name)
    field = np.pad(_ball_pair(), 1).astype(np.float32)
    verts, faces = be.marching_cubes(be.asarray(field), 0.5)
    mesh = trimesh.Trimesh(verts, faces, process=True)
    assert mesh.is_watertight
    assert abs(abs(mesh.volume) - field.sum()) / field.sum() < 0.02


def test_warp_marching_cubes_matches_scikit_image_on_warp_cpu_device():
    pytest.importorskip("warp", reason="warp-lang (gpu extra) not installed")
    from scipy.spatial import cKDTree
    from skimage.measure import marching_cubes

    rng = np.random.default_rng(3)
    field = np.pad(_ball_pair(), 1).astype(np.float32)
    field += rng.normal(0, 0.05, field.shape).astype(np.float32)  # non-trivial interpolation
    wv, wf = _gpu.warp_marching_cubes(field, 0.5, device="cpu")
    sv, sf, _, _ = marching_cubes(field, 0.5)
    hausdorff = max(cKDTree(sv).query(wv)[0].max(), cKDTree(wv).query(sv)[0].max())
    assert hausdorff < 0.5
    import trimesh

    wvol = trimesh.Trimesh(wv, wf).volume
    svol = trimesh.Trimesh(sv, sf).volume
    assert np.sign(wvol) == np.sign(svol)  # same winding convention
    assert abs(wvol - svol) / abs(svol) < 0.01
