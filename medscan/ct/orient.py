"""Lossless reorientation of a volume into the canonical orientation the CT methods assume.

A DICOM series may store its voxels as axial, coronal or sagittal slices, with rows and
columns running either way. The segmentation works slice by slice in places (hole filling, the
in-plane opening, the airway search), so it must always see *axial* slices with a known
handedness. :func:`canonical_reorientation` finds, from the affine alone, the axis permutation
and flips that bring the array to the canonical order

* array axis 0 runs toward the head (superior, +z in LPS),
* array axis 1 runs toward the back (posterior, +y),
* array axis 2 runs toward the patient's left (+x),

i.e. a ``(z, y, x)`` array whose affine is diagonal-dominant with positive entries. Only
transposes and flips are used (no interpolation), so the round trip is exact and every voxel
keeps its LPS position. The axis assignment is :func:`nibabel.orientations.io_orientation`
(the closest axis for oblique, e.g. gantry-tilted, directions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Name of the stored slice plane by the world axis its slice normal is closest to (x, y, z).
PLANE_BY_NORMAL = ("sagittal", "coronal", "axial")

_SWAP_XYZ_ZYX = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips from the stored array order to the canonical one.

    Attributes
    ----------
    perm : tuple of int
        Canonical array axis ``a`` is stored array axis ``perm[a]`` (``numpy.transpose``
        order; axes in ``(z, y, x)`` array order).
    flips : tuple of bool
        Canonical array axis ``a`` is reversed after the transpose when ``flips[a]``.
    stored_plane : str
        ``axial``, ``coronal`` or ``sagittal``: the plane the stored slices lie closest to.
    """

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    stored_plane: str

    @property
    def identity(self) -> bool:
        """True when the stored array is already canonical (no copy needed)."""
        return self.perm == (0, 1, 2) and not any(self.flips)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """View of a stored ``(z, y, x)`` array in canonical order (no copy)."""
        out = np.transpose(array, self.perm)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=axis)
        return out

    def to_stored(self, array: np.ndarray) -> np.ndarray:
        """View of a canonical array in the stored order (inverse of :meth:`to_canonical`)."""
        out = array
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=axis)
        return np.transpose(out, np.argsort(self.perm))

    def canonical_affine(self, affine: np.ndarray, stored_shape: tuple[int, ...]) -> np.ndarray:
        """Affine of the canonical array: the same LPS position for every voxel.

        Parameters
        ----------
        affine : numpy.ndarray
            4x4 stored index ``(i, j, k)`` -> LPS mm.
        stored_shape : tuple of int
            Shape ``(z, y, x)`` of the stored array.

        Returns
        -------
        numpy.ndarray
            4x4 canonical index ``(i, j, k)`` -> LPS mm.
        """
        # homogeneous map canonical (z, y, x) index q -> stored (z, y, x) index p
        m = np.zeros((4, 4))
        for a, old in enumerate(self.perm):
            if self.flips[a]:
                m[old, a], m[old, 3] = -1.0, stored_shape[old] - 1.0
            else:
                m[old, a] = 1.0
        m[3, 3] = 1.0
        return np.asarray(affine, float) @ _SWAP_XYZ_ZYX @ m @ _SWAP_XYZ_ZYX


def canonical_reorientation(affine: np.ndarray) -> Reorientation:
    """The lossless reorientation that makes a stored array canonical (see module docstring).

    Parameters
    ----------
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> LPS mm of the stored ``(z, y, x)`` array.

    Returns
    -------
    Reorientation
    """
    from nibabel.orientations import io_orientation

    # ornt[n] = (world axis, sign) of voxel axis n = (i, j, k) = stored array axis 2 - n
    ornt = io_orientation(np.asarray(affine, float))
    perm = [0, 0, 0]
    flips = [False, False, False]
    for n, (world, sign) in enumerate(ornt):
        canonical_axis = 2 - int(world)  # world z (S) -> array axis 0, world x (L) -> axis 2
        perm[canonical_axis] = 2 - n
        flips[canonical_axis] = bool(sign < 0)
    slice_normal_world = int(ornt[2][0])  # world axis of stored array axis 0 (k)
    return Reorientation(
        perm=tuple(perm),  # type: ignore[arg-type]
        flips=tuple(flips),  # type: ignore[arg-type]
        stored_plane=PLANE_BY_NORMAL[slice_normal_world],
    )
