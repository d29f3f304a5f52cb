"""One world frame for every napari layer medscan makes.

napari indexes layer data in array order, so a CT volume ``hu[k, j, i]`` is ``(z, y, x)``, while
the NIfTI/DICOM affine maps ``(i, j, k)`` = ``(x, y, z)`` and meshes store vertices as LPS
``(x, y, z)`` in mm. The medscan napari world is **patient LPS millimetres with axes
(I, P, L)**: world axis 0 is inferior (``-z`` of LPS), axis 1 is posterior (``y``), axis 2 is
left (``x``)::

    world = (-z_lps, y_lps, x_lps)

Why not plain ``(z, y, x)`` = (S, P, L)? napari draws the last two axes with axis 1 pointing down
and axis 2 right, and in 3D axis 0 pointing *towards* the viewer, i.e. it assumes a right-handed
``(axis 0, axis 1, axis 2)``. (S, P, L) is left-handed, so its 3D view would be a mirror image
(the patient's left shown on the right in an anterior view), and napari's 3D lighting breaks
when the camera's depth axis is flipped to compensate. (I, P, L) is a proper rotation of LPS:
2D slices show the radiological convention (anterior up, patient's left on the right, seen from
the feet), 3D views have the right chirality in a plain napari, and mesh normals keep pointing
outwards. Coordinates in the status bar are LPS mm with the sign of z flipped (axis label I).

* volumes and label maps: :func:`world_affine` maps ``(z, y, x)`` indices to the world; after
  :func:`reorient_lps` an axial grid is a plain ``scale`` + ``translate``;
* meshes: :func:`world_from_lps` on the vertices, no transform on the layer.

These helpers import neither napari nor Qt, so they are usable and testable without a display.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Axis labels of the medscan napari world (LPS mm, reordered and z negated).
WORLD_AXES = ("I", "P", "L")

#: LPS (x, y, z) -> world (I, P, L) = (-z, y, x) (homogeneous 4x4, a proper rotation).
_WORLD_FROM_LPS = np.array(
    [[0, 0, -1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],
    dtype=np.float64,
)
_LPS_FROM_WORLD = _WORLD_FROM_LPS.T.copy()

#: Index order (z, y, x) <-> (i, j, k) = (x, y, z) (homogeneous 4x4, its own inverse).
_REVERSE = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],
    dtype=np.float64,
)

#: LPS -> LPI (z negated): the frame :func:`reorient_lps` aligns the array axes with.
_LPI = np.diag([1.0, 1.0, -1.0, 1.0])


def world_from_lps(points_lps: np.ndarray) -> np.ndarray:
    """Map LPS ``(x, y, z)`` mm points (e.g. mesh vertices) to the napari world ``(I, P, L)``.

    Parameters
    ----------
    points_lps : numpy.ndarray
        Shape ``(n, 3)``, LPS coordinates in mm.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 3)``, world coordinates in mm (float64).
    """
    pts = np.asarray(points_lps, dtype=np.float64)
    return pts @ _WORLD_FROM_LPS[:3, :3].T


def lps_from_world(points_world: np.ndarray) -> np.ndarray:
    """Inverse of :func:`world_from_lps`: napari world ``(I, P, L)`` -> LPS ``(x, y, z)`` mm."""
    pts = np.asarray(points_world, dtype=np.float64)
    return pts @ _LPS_FROM_WORLD[:3, :3].T


def world_affine(lps_affine: np.ndarray) -> np.ndarray:
    """Layer affine mapping ``(z, y, x)`` array indices to the napari world ``(I, P, L)`` mm.

    Parameters
    ----------
    lps_affine : numpy.ndarray
        4x4, ``(i, j, k, 1)`` = ``(x, y, z, 1)`` -> LPS mm (the :class:`medscan.volume.Volume`
        convention).

    Returns
    -------
    numpy.ndarray
        4x4 for napari's ``affine=`` (or ``scale``/``translate`` via :func:`layer_transform`).
    """
    return _WORLD_FROM_LPS @ np.asarray(lps_affine, dtype=np.float64) @ _REVERSE


def lps_affine_from_world(affine_zyx: np.ndarray) -> np.ndarray:
    """Inverse of :func:`world_affine`: napari ``(z, y, x)`` affine -> LPS ``(i, j, k)`` one."""
    return _LPS_FROM_WORLD @ np.asarray(affine_zyx, dtype=np.float64) @ _REVERSE


def reorient_lps(data_zyx: np.ndarray, lps_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose a volume so its axes ``(x, y, z)`` run along +L, +P, +I (head first).

    The voxels keep their world positions; only the storage order changes (a view, no copy).
    dcm2niix-style NIfTI files, for example, store rows bottom-up (a negative y spacing in
    LPS) and slices feet first; after this an axial grid maps to the napari world with a
    positive diagonal, which napari shows as a plain ``scale``.

    Parameters
    ----------
    data_zyx : numpy.ndarray
        Array in ``(z, y, x)`` order.
    lps_affine : numpy.ndarray
        4x4 ``(i, j, k)`` -> LPS mm.

    Returns
    -------
    data_zyx : numpy.ndarray
        Reoriented view.
    lps_affine : numpy.ndarray
        The affine of the reoriented array.
    """
    from nibabel import orientations

    lps_affine = np.asarray(lps_affine, dtype=np.float64)
    data_xyz = np.asarray(data_zyx).transpose(2, 1, 0)
    ornt = orientations.io_orientation(_LPI @ lps_affine)
    out_xyz = orientations.apply_orientation(data_xyz, ornt)
    new_affine = lps_affine @ orientations.inv_ornt_aff(ornt, data_xyz.shape)
    return out_xyz.transpose(2, 1, 0), new_affine


def restore_orientation(
    data_zyx: np.ndarray, lps_affine: np.ndarray, source_affine: np.ndarray, atol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Undo :func:`reorient_lps`: put a volume back in the storage order of ``source_affine``.

    The CT segmentation widget analyses the image layer's data; with this it analyses (and
    writes) the volume in the loader's own voxel order, as ``medscan segment`` does.

    Parameters
    ----------
    data_zyx : numpy.ndarray
        Array in ``(z, y, x)`` order with LPS affine ``lps_affine``.
    lps_affine : numpy.ndarray
        4x4 ``(i, j, k)`` -> LPS mm of ``data_zyx``.
    source_affine : numpy.ndarray
        4x4 affine of the same voxels in their original storage order.
    atol : float
        Tolerance (mm) for "the same grid".

    Returns
    -------
    data_zyx : numpy.ndarray
        A view in the original order, or ``data_zyx`` unchanged when ``source_affine`` is not
        a flip/transpose of the same grid (the layer was moved or resampled since).
    lps_affine : numpy.ndarray
        Its affine (``source_affine``, or ``lps_affine`` unchanged).
    """
    from nibabel import orientations

    lps_affine = np.asarray(lps_affine, dtype=np.float64)
    source_affine = np.asarray(source_affine, dtype=np.float64)
    data_xyz = np.asarray(data_zyx).transpose(2, 1, 0)
    ornt = orientations.ornt_transform(
        orientations.io_orientation(lps_affine), orientations.io_orientation(source_affine)
    )
    out_xyz = orientations.apply_orientation(data_xyz, ornt)
    new_affine = lps_affine @ orientations.inv_ornt_aff(ornt, data_xyz.shape)
    if not np.allclose(new_affine, source_affine, atol=atol):
        return np.asarray(data_zyx), lps_affine
    return out_xyz.transpose(2, 1, 0), source_affine


def layer_transform(lps_affine: np.ndarray, atol: float = 1e-6) -> dict[str, Any]:
    """Layer keyword arguments for napari placing a ``(z, y, x)`` grid in the medscan world.

    An axis-aligned grid with positive spacings gets ``scale`` and ``translate`` (so
    ``layer.scale`` is the voxel size in mm); any other grid (tilted gantry, oblique) gets the
    full ``affine``.

    Parameters
    ----------
    lps_affine : numpy.ndarray
        4x4 ``(i, j, k)`` -> LPS mm.
    atol : float
        Tolerance for calling the direction matrix diagonal.

    Returns
    -------
    dict
        ``{"scale": ..., "translate": ...}`` or ``{"affine": 4x4}``.
    """
    m = world_affine(lps_affine)
    linear = m[:3, :3]
    diag = np.diag(linear)
    if np.allclose(linear, np.diag(diag), atol=atol) and np.all(diag > 0):
        scale = tuple(float(s) for s in diag)
        return {"scale": scale, "translate": tuple(float(t) for t in m[:3, 3])}
    return {"affine": m}


def lps_affine_from_layer(layer: Any) -> np.ndarray:
    """Recover the LPS ``(i, j, k)`` affine of an image or labels layer from its transforms.

    Works for any layer placed with scale/translate/rotate/shear/affine, using only napari's
    public ``data_to_world``.

    Parameters
    ----------
    layer : napari.layers.Layer
        A 3D layer in the medscan world.

    Returns
    -------
    numpy.ndarray
        4x4 ``(i, j, k)`` -> LPS mm.
    """
    origin = np.asarray(layer.data_to_world((0.0, 0.0, 0.0)), dtype=np.float64)
    m = np.eye(4)
    m[:3, 3] = origin
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        m[:3, axis] = np.asarray(layer.data_to_world(tuple(unit)), dtype=np.float64) - origin
    return lps_affine_from_world(m)


def parse_color(value: Any, default: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 1.0)):
    """Turn a manifest colour (``"#rrggbb"``, 0-255 or 0-1 RGB/RGBA list) into RGBA floats.

    Parameters
    ----------
    value : str or sequence or None
        Colour as written in a manifest.
    default : tuple of float
        Returned when ``value`` is missing or unreadable.

    Returns
    -------
    tuple of float
        RGBA in 0..1.
    """
    if value is None:
        return default
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if len(text) in (6, 8):
            try:
                parts = [int(text[i : i + 2], 16) / 255.0 for i in range(0, len(text), 2)]
            except ValueError:
                return default
            return tuple(parts + [1.0] * (4 - len(parts)))  # type: ignore[return-value]
        try:
            from matplotlib.colors import to_rgba

            return tuple(float(c) for c in to_rgba(value))  # type: ignore[return-value]
        except (ImportError, ValueError):
            return default
    try:
        parts = [float(c) for c in value]
    except (TypeError, ValueError):
        return default
    if len(parts) not in (3, 4):
        return default
    if max(parts) > 1.0:
        parts = [c / 255.0 for c in parts]
    return tuple(parts + [1.0] * (4 - len(parts)))  # type: ignore[return-value]
