"""One world frame for every napari layer medscan makes.

napari indexes layer data in array order, so a CT volume ``hu[k, j, i]`` is ``(z, y, x)``, while
the NIfTI/DICOM affine maps ``(i, j, k)`` = ``(x, y, z)`` and meshes store vertices as LPS
``(x, y, z)`` in mm. medscan therefore uses **patient LPS millimetres in reversed axis order**
as the napari world: world axis 0 is S (superior), axis 1 is P (posterior), axis 2 is L (left).

* volumes and label maps: ``world = P @ A_lps @ P`` applied to ``(z, y, x)`` indices, where ``P``
  reverses the three axes; axis-aligned grids become plain ``scale`` + ``translate``;
* meshes: ``world = vertices_lps[:, ::-1]`` (no transform on the layer).

In 2D the displayed plane is then (P down, L right): the radiological convention (patient's left
on the right of the screen, anterior at the top).

These helpers import neither napari nor Qt, so they are usable and testable without a display.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Axis labels of the medscan napari world (LPS mm, reversed to array order).
WORLD_AXES = ("S", "P", "L")

#: Reverses the three spatial axes (homogeneous 4x4).
_REVERSE = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],
    dtype=np.float64,
)


def world_from_lps(points_lps: np.ndarray) -> np.ndarray:
    """Map LPS ``(x, y, z)`` mm points (e.g. mesh vertices) to the napari world ``(S, P, L)``.

    Parameters
    ----------
    points_lps : numpy.ndarray
        Shape ``(n, 3)``, LPS coordinates in mm.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 3)``, world coordinates in mm (float64).
    """
    return np.ascontiguousarray(np.asarray(points_lps, dtype=np.float64)[:, ::-1])


def lps_from_world(points_world: np.ndarray) -> np.ndarray:
    """Inverse of :func:`world_from_lps`."""
    return world_from_lps(points_world)


def world_affine(lps_affine: np.ndarray) -> np.ndarray:
    """Layer affine mapping ``(z, y, x)`` array indices to the napari world ``(S, P, L)`` mm.

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
    return _REVERSE @ np.asarray(lps_affine, dtype=np.float64) @ _REVERSE


def lps_affine_from_world(affine_zyx: np.ndarray) -> np.ndarray:
    """Inverse of :func:`world_affine`: napari ``(z, y, x)`` affine -> LPS ``(i, j, k)`` one."""
    return _REVERSE @ np.asarray(affine_zyx, dtype=np.float64) @ _REVERSE


def reorient_lps(data_zyx: np.ndarray, lps_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose a volume so its axes run along +L, +P, +S as closely as possible.

    The voxels keep their world positions; only the storage order changes (a view, no copy).
    dcm2niix-style NIfTI files, for example, store rows bottom-up, which is a negative y spacing
    in LPS; after this the grid of an axial series has a positive diagonal affine, which napari
    renders as a plain ``scale``.

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
    ornt = orientations.io_orientation(lps_affine)
    out_xyz = orientations.apply_orientation(data_xyz, ornt)
    new_affine = lps_affine @ orientations.inv_ornt_aff(ornt, data_xyz.shape)
    return out_xyz.transpose(2, 1, 0), new_affine


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
