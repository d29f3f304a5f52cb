"""Array backends: one algorithm, two array libraries.

Algorithms in :mod:`medscan.ct` are written once against a :class:`Backend`:

* ``be.xp``  -- ``numpy`` or ``cupy``
* ``be.ndi`` -- ``scipy.ndimage`` or ``cupyx.scipy.ndimage``
* ``be.ski`` -- ``skimage`` or ``cucim.skimage`` (imported lazily: ``be.ski.morphology``)
* the few operations whose best implementation differs per library are methods:
  :meth:`Backend.label` (cc3d on CPU, cuCIM on GPU) and :meth:`Backend.marching_cubes`
  (scikit-image on CPU, NVIDIA warp on GPU).

``get_backend("auto")`` picks the GPU only when ``cupy.cuda.is_available()`` is True and a
tiny allocation succeeds; ``get_backend("gpu")`` without a usable GPU raises
:class:`BackendUnavailable` with a one-line reason. The CPU path never imports cupy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine."""


class _LazySkimage:
    """``be.ski.<submodule>`` imports ``skimage.<submodule>`` (or cuCIM's) on first use."""

    def __init__(self, root: str) -> None:
        self._root = root

    def __getattr__(self, name: str) -> ModuleType:
        return importlib.import_module(f"{self._root}.{name}")


class _LazyModule:
    """A module imported on first attribute access (``be.ndi.label`` imports scipy.ndimage).

    SciPy's import costs about a third of a second: commands that end before any image work
    (a rerun whose cases are all current, ``--help``) should not pay it (issue 15).
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


@dataclass(frozen=True)
class Backend:
    """A set of array libraries that implement the same API.

    Attributes
    ----------
    name : str
        ``"cpu"`` or ``"gpu"``.
    xp : module
        NumPy-compatible array module.
    ndi : module
        SciPy-ndimage-compatible module.
    ski : object
        scikit-image-compatible namespace (``ski.morphology``, ``ski.measure``, ...).
    """

    name: str
    xp: Any
    ndi: Any
    ski: Any

    def asarray(self, array: Any) -> Any:
        """Move ``array`` to this backend's device."""
        return self.xp.asarray(array)

    def asnumpy(self, array: Any) -> np.ndarray:
        """Bring ``array`` back to host memory as a NumPy array."""
        if self.name == "gpu":
            return self.xp.asnumpy(array)
        return np.asarray(array)

    def label(self, mask: Any, connectivity: int = 6) -> tuple[Any, int]:
        """Label connected components of a boolean 3-D mask.

        Parameters
        ----------
        mask : array
            Boolean array ``(z, y, x)``.
        connectivity : int
            6, 18 or 26 (face, edge or corner neighbours).

        Returns
        -------
        labels : array
            uint32 component ids, 0 for background; ids are in raster-scan order of first
            appearance on both backends.
        n : int
            Number of components.
        """
        if self.name == "gpu":
            from medscan import _gpu

            return _gpu.label(mask, connectivity)
        import cc3d

        # uint32 straight from cc3d: its own choice (uint16 for few provisional labels) would
        # need a whole-array up-conversion here
        labels, n = cc3d.connected_components(
            np.asarray(mask, dtype=bool), connectivity=connectivity, return_N=True,
            out_dtype=np.uint32,
        )
        return labels.astype(np.uint32, copy=False), int(n)

    def marching_cubes(
        self, volume: Any, level: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Iso-surface of a 3-D scalar field, in array index coordinates ``(z, y, x)``.

        Parameters
        ----------
        volume : array
            Float field ``(z, y, x)``; pad it with a border below ``level`` for closed surfaces.
        level : float
            Iso value.

        Returns
        -------
        vertices : numpy.ndarray
            float64 ``(n, 3)`` in ``(z, y, x)`` index units (host memory).
        faces : numpy.ndarray
            int64 ``(m, 3)`` triangles, outward normals toward lower values.
        """
        if self.name == "gpu":
            from medscan import _gpu

            return _gpu.marching_cubes(volume, level)
        from skimage.measure import marching_cubes

        verts, faces, _normals, _values = marching_cubes(
            np.asarray(volume), level=level, allow_degenerate=False
        )
        return verts.astype(np.float64), faces.astype(np.int64)


def gpu_available() -> tuple[bool, str]:
    """Return ``(True, "")`` when CuPy can use a CUDA device, else ``(False, reason)``."""
    try:
        import cupy
    except ImportError:
        return False, "cupy is not installed (pip install 'medscan[gpu]')"
    try:
        if not cupy.cuda.is_available():
            return False, "no CUDA device is visible (cupy.cuda.is_available() is False)"
        cupy.zeros(1)
    except Exception as exc:  # CUDARuntimeError is a RuntimeError
        return False, f"CUDA is not usable: {exc}"
    return True, ""


def cpu_backend() -> Backend:
    """Return the NumPy / SciPy / scikit-image / cc3d backend."""
    return Backend(name="cpu", xp=np, ndi=_LazyModule("scipy.ndimage"),
                   ski=_LazySkimage("skimage"))


def gpu_backend() -> Backend:
    """Return the CuPy / cuCIM / warp backend; raise :class:`BackendUnavailable` without a GPU."""
    ok, reason = gpu_available()
    if not ok:
        raise BackendUnavailable(f"backend=gpu needs a CUDA GPU: {reason}")
    import cupy
    import cupyx.scipy.ndimage as cndi

    return Backend(name="gpu", xp=cupy, ndi=cndi, ski=_LazySkimage("cucim.skimage"))


def get_backend(name: str = "auto") -> Backend:
    """Return the backend called ``name`` (``"cpu"``, ``"gpu"`` or ``"auto"``).

    Raises
    ------
    BackendUnavailable
        For ``"gpu"`` on a machine without a usable GPU.
    ValueError
        For an unknown name.
    """
    if name == "cpu":
        return cpu_backend()
    if name == "gpu":
        return gpu_backend()
    if name == "auto":
        return gpu_backend() if gpu_available()[0] else cpu_backend()
    raise ValueError(f"unknown backend {name!r}: use cpu, gpu or auto")
