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

#: A resampled grid may have at most this many times the acquired slices: more means a position
#: outlier or a gap so large that interpolating across it would invent most of the volume.
MAX_RESAMPLE_GROWTH = 4.0
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
        When the positions are not on one line, not strictly increasing along it, fewer than 2
        slices are given, or the grid would exceed :data:`MAX_RESAMPLE_GROWTH` times the input.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if len(positions) < 2:
        raise ValueError("need at least 2 slices")
    origin = positions[0]
    direction = positions[-1] - origin
    length = float(np.linalg.norm(direction))
    if not (np.isfinite(length) and length > 0):
        raise ValueError("the first and last slice positions coincide or are not finite")
    unit = direction / length
    t = (positions - origin) @ unit
    off_line = np.linalg.norm((positions - origin) - np.outer(t, unit), axis=1)
    if float(off_line.max()) > COLLINEAR_TOL_MM:
        raise ValueError(f"slice positions are not collinear (up to {off_line.max():.2f} mm off)")
    step = float(np.median(np.diff(t)))
    if not (np.all(np.isfinite(t)) and np.all(np.diff(t) > 0) and np.isfinite(step) and step > 0):
        raise ValueError("slice positions are not strictly increasing along the stacking line")
    n_float = t[-1] / step + 1.0
    if n_float > MAX_RESAMPLE_GROWTH * len(t):
        raise ValueError(
            f"a uniform grid at the median step {step:.4g} mm would need {n_float:.0f} slices, "
            f"more than {MAX_RESAMPLE_GROWTH:g}x the {len(t)} acquired ones (a slice far off the "
            "rest, or a very large gap); refused"
        )
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
