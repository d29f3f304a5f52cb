"""Check every number that enters a volume's geometry or HU before it is used (issue 19).

A corrupt or hostile header can carry values that pydicom reads without complaint but that make
a volume silently wrong: RescaleSlope ``nan`` (NaN HU), a PixelSpacing or ImageOrientationPatient
of zeros (a singular affine, divisions by zero downstream), one ImagePositionPatient 20 m away from
the others (a mean slice step of metres, or a resampled grid of thousands of slices). Each such
value becomes a named ``error`` finding here, which :func:`medscan.dicom.load` turns into a
:class:`~medscan.dicom.SeriesError` (a refusal naming the files and the reason); nothing is
guessed or repaired.

The limits are deliberately wide (they catch corruption, not unusual scanners):

* RescaleSlope finite and in ``(0, MAX_RESCALE_SLOPE]``; RescaleIntercept finite with
  ``|b| <= MAX_RESCALE_INTERCEPT`` (CT slopes are about 1; with 32-bit stored values at most,
  every HU is then finite in float32).
* BitsAllocated in :data:`BITS_ALLOCATED`, ``1 <= BitsStored <= BitsAllocated``.
* PixelSpacing finite, in ``[MIN_PIXEL_SPACING_MM, MAX_PIXEL_SPACING_MM]``.
* ImageOrientationPatient: unit row and column vectors (within ``ORIENTATION_TOL``) that are
  orthogonal (|cos| within ``ORIENTATION_TOL``), as PS3.3 C.7.6.2.1.1 requires.
* ImagePositionPatient within ``MAX_ABS_POSITION_MM`` of the origin; the stack no longer than
  ``MAX_STACK_EXTENT_MM``; an end slice more than ``OUTLIER_STEP_FACTOR`` times the median step
  (and at least ``OUTLIER_MIN_MM``) away from its neighbour is a position outlier.
* In the image plane: each slice's ImagePositionPatient projected on the row and on the column
  direction must lie within ``INPLANE_TOL_PIXELS`` pixels + ``INPLANE_TOL_MM`` of a robust
  (Theil-Sen) line through all slices as a function of the position along the normal; a
  straight line allows a gantry-tilted (sheared) stack, a single slice shifted sideways is a
  ``position_outlier``.
* The affine: finite, and its three columns not (nearly) linearly dependent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medscan.volume import Finding

if TYPE_CHECKING:
    from medscan.dicom.headers import SliceHeader

MAX_RESCALE_SLOPE = 1000.0
MAX_RESCALE_INTERCEPT = 100_000.0
#: BitsAllocated of a single-sample CT image (PS3.3 C.7.6.3.1.1: 8, 16; 32 is allowed).
BITS_ALLOCATED = (8, 16, 32)
MIN_PIXEL_SPACING_MM = 1e-3
MAX_PIXEL_SPACING_MM = 100.0
ORIENTATION_TOL = 0.01
MAX_ABS_POSITION_MM = 100_000.0
#: Longer than any body; a stack this long has a corrupt position.
MAX_STACK_EXTENT_MM = 4000.0
OUTLIER_STEP_FACTOR = 10.0
OUTLIER_MIN_MM = 50.0
#: In-plane position tolerance: half a pixel (a misplacement any viewer would show) plus 0.1 mm
#: for IPP strings written with few decimals. Table motion is along the slice normal (or, for a
#: gantry tilt, a straight line in the row/column plane, which the robust line fit absorbs).
INPLANE_TOL_PIXELS = 0.5
INPLANE_TOL_MM = 0.1
#: |det(A)| / (|a0| |a1| |a2|) below this is a singular affine (1 = orthogonal columns).
MIN_AFFINE_VOLUME_RATIO = 1e-3


def _files(headers: Sequence[SliceHeader], limit: int = 20) -> list[str]:
    return [str(h.path) for h in headers[:limit]]


def _listing(headers: Sequence[SliceHeader], limit: int = 3) -> str:
    names = ", ".join(h.path.name for h in headers[:limit])
    return names + (f" (+{len(headers) - limit} more)" if len(headers) > limit else "")


def rescale_findings(headers: Sequence[SliceHeader]) -> list[Finding]:
    """Refuse slices whose RescaleSlope/Intercept are not finite or not plausible for CT.

    Parameters
    ----------
    headers : sequence of SliceHeader
        The slices of one series.

    Returns
    -------
    list of Finding
        One ``bad_rescale`` error naming the files, or nothing.
    """
    bad = []
    for h in headers:
        slope, intercept = float(h.slope), float(h.intercept)
        # With these bounds and stored values of at most 32 bits every HU is finite in float32.
        if not (
            math.isfinite(slope)
            and math.isfinite(intercept)
            and 0.0 < slope <= MAX_RESCALE_SLOPE
            and abs(intercept) <= MAX_RESCALE_INTERCEPT
        ):
            bad.append(h)
    if not bad:
        return []
    pairs = sorted({(repr(float(h.slope)), repr(float(h.intercept))) for h in bad})[:5]
    return [
        Finding(
            "bad_rescale",
            "error",
            f"{len(bad)} slice(s) have a RescaleSlope/RescaleIntercept that is not finite or not "
            f"plausible for CT (slope must be in (0, {MAX_RESCALE_SLOPE:g}], |intercept| <= "
            f"{MAX_RESCALE_INTERCEPT:g}): {pairs} in {_listing(bad)}",
            _files(bad),
            {"pairs": [list(p) for p in pairs], "n_slices": len(bad)},
        )
    ]


def _orientation_error(orientation: np.ndarray) -> str | None:
    row, col = orientation[:3], orientation[3:]
    if not np.all(np.isfinite(orientation)) or float(np.max(np.abs(orientation))) > 2.0:
        return "not finite or not direction cosines"
    nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if abs(nr - 1.0) > ORIENTATION_TOL or abs(nc - 1.0) > ORIENTATION_TOL:
        return f"row/column direction lengths {nr:.4g}/{nc:.4g} are not 1"
    cos = float(row @ col) / (nr * nc)
    if abs(cos) > ORIENTATION_TOL:
        return f"row and column directions are not orthogonal (cos {cos:.4g})"
    return None


def geometry_findings(headers: Sequence[SliceHeader]) -> list[Finding]:
    """Refuse degenerate pixel spacing, orientation, image size and far-off positions.

    Parameters
    ----------
    headers : sequence of SliceHeader
        The slices of one series (one geometry group).

    Returns
    -------
    list of Finding
        ``bad_pixel_spacing``, ``bad_orientation``, ``bad_pixel_module``, ``bad_image_size``
        and ``implausible_position`` errors (each naming its files), or nothing.
    """
    findings: list[Finding] = []
    spacing_bad = [
        h for h in headers
        if h.pixel_spacing is not None and not all(
            math.isfinite(v) and MIN_PIXEL_SPACING_MM <= v <= MAX_PIXEL_SPACING_MM
            for v in h.pixel_spacing
        )
    ]
    if spacing_bad:
        values = sorted({tuple(h.pixel_spacing) for h in spacing_bad})[:3]  # type: ignore[arg-type]
        findings.append(Finding(
            "bad_pixel_spacing", "error",
            f"PixelSpacing {values} mm in {_listing(spacing_bad)} is zero, negative, not finite "
            f"or outside [{MIN_PIXEL_SPACING_MM:g}, {MAX_PIXEL_SPACING_MM:g}] mm",
            _files(spacing_bad), {"values_mm": [list(v) for v in values]},
        ))
    orient_bad = [(h, why) for h in headers if h.orientation is not None
                  and (why := _orientation_error(h.orientation)) is not None]
    if orient_bad:
        findings.append(Finding(
            "bad_orientation", "error",
            f"ImageOrientationPatient of {_listing([h for h, _ in orient_bad])} is degenerate: "
            f"{orient_bad[0][1]}",
            _files([h for h, _ in orient_bad]),
            {"orientation": orient_bad[0][0].orientation.tolist()},  # type: ignore[union-attr]
        ))
    bits_bad = [h for h in headers if h.has_pixels and not (
        h.bits_allocated in BITS_ALLOCATED and 1 <= h.bits_stored <= h.bits_allocated)]
    if bits_bad:
        findings.append(Finding(
            "bad_pixel_module", "error",
            f"BitsAllocated/BitsStored {bits_bad[0].bits_allocated}/{bits_bad[0].bits_stored} in "
            f"{_listing(bits_bad)}: need BitsAllocated in {BITS_ALLOCATED} and 1 <= BitsStored "
            "<= BitsAllocated",
            _files(bits_bad),
        ))
    size_bad = [h for h in headers if h.has_pixels and (h.rows < 1 or h.columns < 1)]
    if size_bad:
        findings.append(Finding(
            "bad_image_size", "error",
            f"Rows/Columns {size_bad[0].rows}x{size_bad[0].columns} in {_listing(size_bad)}: "
            "an image needs at least one row and column",
            _files(size_bad),
        ))
    far = [h for h in headers if h.position is not None
           and float(np.max(np.abs(h.position))) > MAX_ABS_POSITION_MM]
    if far:
        findings.append(Finding(
            "implausible_position", "error",
            f"ImagePositionPatient of {_listing(far)} is more than {MAX_ABS_POSITION_MM:g} mm "
            f"from the origin ({far[0].position.tolist()})",  # type: ignore[union-attr]
            _files(far),
        ))
    return findings


def position_outliers(proj: np.ndarray, max_peel: int | None = None) -> tuple[int, int]:
    """How many slices at the low and the high end of a sorted stack are position outliers.

    A slice is an outlier when its step to the rest is more than :data:`OUTLIER_STEP_FACTOR`
    times the median step of the remaining stack and at least :data:`OUTLIER_MIN_MM`; outliers
    are peeled from both ends one by one (at most a quarter of the slices).

    Parameters
    ----------
    proj : numpy.ndarray
        ``(n,)`` slice positions along the normal, ascending, mm.
    max_peel : int, optional
        At most this many from each end (default ``n // 4``).

    Returns
    -------
    (int, int)
        Number of outliers at the low end and at the high end.
    """
    n = len(proj)
    if n < 4:
        return 0, 0
    max_peel = n // 4 if max_peel is None else max_peel
    lo, hi = 0, n  # the kept slices are proj[lo:hi]
    changed = True
    while changed and hi - lo >= 4:
        changed = False
        steps = np.diff(proj[lo:hi])
        for end in ("low", "high"):
            inner = steps[1:] if end == "low" else steps[:-1]
            median = float(np.median(inner))
            step = float(steps[0] if end == "low" else steps[-1])
            if step > max(OUTLIER_STEP_FACTOR * median, OUTLIER_MIN_MM):
                if end == "low" and lo < max_peel:
                    lo, changed = lo + 1, True
                    break
                if end == "high" and n - hi < max_peel:
                    hi, changed = hi - 1, True
                    break
    return lo, n - hi


def stack_findings(
    headers: Sequence[SliceHeader], proj: np.ndarray, affine: np.ndarray
) -> list[Finding]:
    """Refuse position outliers, an implausibly long stack, and a singular or non-finite affine.

    Parameters
    ----------
    headers : sequence of SliceHeader
        Slices in stacking order.
    proj : numpy.ndarray
        ``(n,)`` their positions along the slice normal (ascending), mm.
    affine : numpy.ndarray
        The 4x4 index -> LPS affine built from them.

    Returns
    -------
    list of Finding
        ``position_outlier``, ``implausible_extent`` and ``degenerate_affine`` errors.
    """
    findings: list[Finding] = []
    low, high = position_outliers(proj)
    if low or high:
        out = list(headers[:low]) + list(headers[len(headers) - high:])
        core = np.diff(proj[low:len(proj) - high])
        median = float(np.median(core)) if core.size else float("nan")
        gaps = ([float(proj[low] - proj[low - 1])] if low else []) + (
            [float(proj[-high] - proj[-high - 1])] if high else [])
        findings.append(Finding(
            "position_outlier", "error",
            f"{len(out)} slice(s) lie far off the rest of the stack along the slice normal "
            f"({', '.join(f'{g:.1f}' for g in gaps)} mm from their neighbour; median step "
            f"{median:.4g} mm): {_listing(out)}; a corrupt ImagePositionPatient is likely, so "
            "the series is not loaded (remove or fix those files)",
            _files(out), {"gaps_mm": gaps, "median_step_mm": median, "n_outliers": len(out)},
        ))
    extent = float(proj[-1] - proj[0]) if len(proj) else 0.0
    if extent > MAX_STACK_EXTENT_MM and not (low or high):
        findings.append(Finding(
            "implausible_extent", "error",
            f"the stack is {extent:.0f} mm long along its normal (more than "
            f"{MAX_STACK_EXTENT_MM:g} mm): corrupt ImagePositionPatient values",
            _files([headers[0], headers[-1]]), {"extent_mm": extent},
        ))
    findings += inplane_findings(headers, proj)
    findings += affine_findings(affine, headers)
    return findings


def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Theil-Sen line through ``(x, y)``: slope and intercept, as :func:`scipy.stats.theilslopes`.

    The slope is the median of the slopes between all pairs with different ``x``; the intercept
    ``median(y) - slope * median(x)`` (scipy's default ``method="separate"``; Sen 1968, Theil
    1950). The same arithmetic as scipy's point estimate (``tests/test_dicom_validate.py``
    compares them), written here because importing :mod:`scipy.stats` costs 0.8-1.1 s of
    process start, more than reading every header of a 255-slice series; its confidence
    interval is not needed.

    Parameters
    ----------
    x, y : numpy.ndarray
        ``(n,)`` float64 with ``n >= 2``; here positions along the slice normal and in-plane
        positions, mm.

    Returns
    -------
    slope, intercept : float
        NaN slope (and intercept) when every ``x`` is equal.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    dx = x[:, None] - x
    dy = y[:, None] - y
    pairs = dx > 0
    slopes = dy[pairs] / dx[pairs]
    if slopes.size == 0:
        return float("nan"), float("nan")
    slope = float(np.median(slopes))
    return slope, float(np.median(y) - slope * np.median(x))


def inplane_findings(
    headers: Sequence[SliceHeader], proj: np.ndarray
) -> list[Finding]:
    """Refuse slices whose ImagePositionPatient is off the stack within the image plane.

    The position of each slice projected on the row and on the column direction is compared
    with a Theil-Sen line (:func:`theil_sen`, robust to up to ~29 % outliers)
    fitted against the position along the normal; a straight line is what an untilted stack
    (constant) and a gantry-tilted one (sheared) give. A slice more than
    ``INPLANE_TOL_PIXELS`` x pixel spacing + ``INPLANE_TOL_MM`` off that line is an outlier.

    Parameters
    ----------
    headers : sequence of SliceHeader
        Slices in stacking order, one geometry (orientation, pixel spacing).
    proj : numpy.ndarray
        ``(n,)`` their positions along the slice normal, mm.

    Returns
    -------
    list of Finding
        One ``position_outlier`` error naming the slices and their in-plane offsets, or nothing.
    """
    first = headers[0] if headers else None
    if (first is None or len(headers) < 3 or first.orientation is None
            or any(h.position is None for h in headers)):
        return []
    positions = np.array([h.position for h in headers], dtype=np.float64)
    if not np.all(np.isfinite(positions)) or not np.all(np.isfinite(proj)):
        return []
    dy, dx = first.pixel_spacing if first.pixel_spacing is not None else (1.0, 1.0)
    offsets = np.zeros(len(headers))
    axes = []
    for name, direction, pixel in (("row", first.orientation[:3], dx),
                                   ("column", first.orientation[3:], dy)):
        a = positions @ np.asarray(direction, dtype=np.float64)
        slope, intercept = theil_sen(proj, a)
        resid = a - (intercept + slope * proj)
        tol = INPLANE_TOL_PIXELS * float(pixel if math.isfinite(pixel) else 1.0) + INPLANE_TOL_MM
        bad = np.abs(resid) > tol
        if bad.any():
            axes.append(f"{name} direction (tolerance {tol:.2f} mm)")
            offsets = np.where(bad & (np.abs(resid) > np.abs(offsets)), resid, offsets)
    out_idx = [i for i in range(len(headers)) if offsets[i] != 0.0]
    if not out_idx:
        return []
    out = [headers[i] for i in out_idx]
    shifts = [round(float(offsets[i]), 2) for i in out_idx]
    return [Finding(
        "position_outlier", "error",
        f"{len(out)} slice(s) lie off the rest of the stack within the image plane along the "
        f"{' and '.join(axes)}: offsets {shifts[:5]} mm in {_listing(out)}; a corrupt "
        "ImagePositionPatient is likely, so the series is not loaded (remove or fix those files)",
        _files(out), {"inplane_offsets_mm": shifts, "n_outliers": len(out)},
    )]


def affine_findings(affine: np.ndarray, headers: Sequence[SliceHeader] = ()) -> list[Finding]:
    """``degenerate_affine`` error when the affine is not finite or (nearly) singular.

    Parameters
    ----------
    affine : numpy.ndarray
        4x4 index -> LPS mm.
    headers : sequence of SliceHeader
        For the file list of the finding.

    Returns
    -------
    list of Finding
    """
    reason = affine_problem(affine)
    if reason is None:
        return []
    return [Finding("degenerate_affine", "error", f"the slice geometry gives {reason}",
                    _files(headers[:1]), {"affine": np.asarray(affine).tolist()})]


def affine_problem(affine: np.ndarray) -> str | None:
    """Why ``affine`` cannot map voxels to patient space, or None when it can.

    Parameters
    ----------
    affine : numpy.ndarray
        4x4 index -> LPS mm.

    Returns
    -------
    str or None
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        return "a non-finite affine"
    cols = a[:3, :3]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        norms = np.linalg.norm(cols, axis=0)
        if np.any(norms <= 0):
            return "a singular affine (a zero voxel spacing)"
        ratio = abs(float(np.linalg.det(cols))) / float(np.prod(norms))
    if not np.all(np.isfinite(norms)) or not np.isfinite(ratio):
        return "an affine whose spacing overflows"
    if ratio < MIN_AFFINE_VOLUME_RATIO:
        return f"a (nearly) singular affine (volume ratio {ratio:.2g})"
    return None
