"""The operations whose GPU implementation differs from the CPU one.

Only :mod:`medscan.backend` imports this module, and only for ``backend=gpu``; nothing here
is imported on the CPU path, so a CPU install never needs cupy, cuCIM or warp.

* Connected components: ``cucim.skimage.measure.label``, relabelled so that component ids
  follow the raster-scan order of their first voxel. That is the order cc3d (the CPU
  implementation) produces, so label maps are comparable id for id across backends.
* Marching cubes: NVIDIA warp's ``warp.geometry.IsoSurfaceMarchingCubes`` (cuCIM has none,
  rapidsai/cucim#332). The field stays on the device (CuPy -> warp through DLPack, no copy);
  only the finished mesh comes back to the host. Warp also runs the same kernels on its CPU
  device, which is how the CPU-only test suite checks this code path against scikit-image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def label(mask: Any, connectivity: int = 6) -> tuple[Any, int]:
    """Label connected components of a boolean CuPy mask, ids in raster-scan order.

    Parameters
    ----------
    mask : cupy.ndarray
        Boolean ``(z, y, x)``.
    connectivity : int
        6, 18 or 26.

    Returns
    -------
    labels : cupy.ndarray
        uint32 ids, 0 = background.
    n : int
        Number of components.
    """
    import cupy as cp
    from cucim.skimage.measure import label as cu_label

    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, not {connectivity}")
    labels, n = cu_label(mask, connectivity=_CONNECTIVITY_RANK[connectivity], return_num=True)
    n = int(n)
    if n == 0:
        return cp.zeros(mask.shape, dtype=cp.uint32), 0
    return raster_order(labels, n, cp), n


def raster_order(labels: Any, n: int, xp: Any) -> Any:
    """Renumber component ids ``1..n`` by the flat index of each component's first voxel.

    Parameters
    ----------
    labels : array
        Integer label image with ids ``0..n``.
    n : int
        Largest id.
    xp : module
        ``numpy`` or ``cupy``.

    Returns
    -------
    array
        uint32 labels whose ids increase in raster-scan order of first appearance.
    """
    flat = labels.ravel()
    fg = xp.flatnonzero(flat)
    ids = flat[fg].astype(xp.int64)
    first = xp.full(n + 1, flat.size, dtype=xp.int64)
    if xp is np:
        np.minimum.at(first, ids, fg)
    else:
        import cupyx

        cupyx.scatter_min(first, ids, fg)
    order = xp.argsort(first[1:])  # old ids (minus one) sorted by first voxel
    new_id = xp.zeros(n + 1, dtype=xp.uint32)
    new_id[order + 1] = xp.arange(1, n + 1, dtype=xp.uint32)
    return new_id[labels]


def marching_cubes(volume: Any, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a CuPy field on the GPU with warp; mesh returned in host memory.

    Parameters
    ----------
    volume : cupy.ndarray
        Scalar field ``(z, y, x)``.
    level : float
        Iso value.

    Returns
    -------
    vertices : numpy.ndarray
        float64 ``(n, 3)`` in ``(z, y, x)`` index units.
    faces : numpy.ndarray
        int64 ``(m, 3)``.
    """
    import cupy as cp
    import warp as wp

    field = cp.ascontiguousarray(volume, dtype=cp.float32)
    return warp_marching_cubes(wp.from_dlpack(field), level)


def warp_marching_cubes(field: Any, level: float, device: str | None = None) -> tuple[
    np.ndarray, np.ndarray
]:
    """Run warp's marching cubes on ``field`` (a warp array, or a NumPy array + ``device``).

    Parameters
    ----------
    field : warp.array or numpy.ndarray
        float32 scalar field ``(z, y, x)``.
    level : float
        Iso value.
    device : str, optional
        Warp device for a NumPy ``field`` (``"cpu"`` or ``"cuda"``).

    Returns
    -------
    vertices : numpy.ndarray
        float64 ``(n, 3)`` in ``(z, y, x)`` index units (warp keeps the array's axis order).
    faces : numpy.ndarray
        int64 ``(m, 3)``, wound like scikit-image's ``marching_cubes``.
    """
    import warp as wp
    from warp.geometry import IsoSurfaceMarchingCubes

    wp.config.quiet = True
    wp.init()
    if isinstance(field, np.ndarray):
        field = wp.array(np.ascontiguousarray(field, dtype=np.float32), dtype=wp.float32,
                         device=device or "cpu")
    verts, indices = IsoSurfaceMarchingCubes.extract(field, float(level))
    vertices = verts.numpy().astype(np.float64)
    faces = indices.numpy().astype(np.int64).reshape(-1, 3)
    return vertices, faces
