"""Optional regularisation of unevenly spaced slice stacks (``load(..., uniform=True)``).

The acquired slices are kept by default (like dcm2niix's main output). A stack whose slice steps
vary (or that has gaps) cannot be described exactly by one affine; with ``uniform=True`` it is
resampled along its stacking line to the median step by linear interpolation between the two
neighbouring acquired slices. The stacking line may be oblique to the slice normal (gantry tilt):
the resulting affine stays sheared, so no in-plane resampling is needed and every output voxel
lies exactly where the affine says.
"""

from __future__ import annotations

import numpy as np

#: Slice positions farther than this from the line through the first and last one (mm) cannot
#: be regularised by interpolation along that line.
COLLINEAR_TOL_MM = 0.05


def regularize_stack(
    hu: np.ndarray, positions: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Resample a stack of slices to uniform spacing along its stacking line.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(z, y, x)`` values of the acquired slices, in stacking order.
    positions : numpy.ndarray
        ``(z, 3)`` ImagePositionPatient of each slice, LPS mm.
    affine : numpy.ndarray
        4x4 index -> LPS affine of the stack (its first two columns are kept).

    Returns
    -------
    hu : numpy.ndarray
        Resampled values, same dtype as the input (int16 is rounded).
    affine : numpy.ndarray
        New affine: third column = unit stacking direction * step, origin = first slice.
    info : dict
        ``step_mm`` (the new uniform step along the stacking line) and ``n_slices``.

    Raises
    ------
    ValueError
        When the positions are not on one line or fewer than 2 slices are given.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if len(positions) < 2:
        raise ValueError("need at least 2 slices")
    origin = positions[0]
    direction = positions[-1] - origin
    length = float(np.linalg.norm(direction))
    unit = direction / length
    t = (positions - origin) @ unit
    off_line = np.linalg.norm((positions - origin) - np.outer(t, unit), axis=1)
    if float(off_line.max()) > COLLINEAR_TOL_MM:
        raise ValueError(f"slice positions are not collinear (up to {off_line.max():.2f} mm off)")
    step = float(np.median(np.diff(t)))
    n = int(np.floor(t[-1] / step + 1e-6)) + 1
    targets = np.arange(n) * step
    lower = np.clip(np.searchsorted(t, targets, side="right") - 1, 0, len(t) - 2)
    weight = (targets - t[lower]) / (t[lower + 1] - t[lower])
    out = np.empty((n, *hu.shape[1:]), dtype=hu.dtype)
    for k in range(n):
        a, b, w = lower[k], lower[k] + 1, float(weight[k])
        value = hu[a].astype(np.float32) * (1.0 - w) + hu[b].astype(np.float32) * w
        out[k] = np.rint(value) if hu.dtype.kind in "iu" else value
    new_affine = affine.copy()
    new_affine[:3, 2] = unit * step
    new_affine[:3, 3] = origin
    return out, new_affine, {"step_mm": step, "n_slices": n}
