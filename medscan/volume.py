"""A CT volume as a set of points in patient space.

Conventions (used by every stage of medscan):

* ``hu`` is indexed ``hu[k, j, i]`` = ``(z, y, x)``: slice, row, column.
* ``affine`` is the 4x4 matrix that maps the homogeneous voxel index ``(i, j, k, 1)``
  (column, row, slice: the DICOM/ITK/NIfTI order, *not* the array order) to patient
  **LPS** coordinates in millimetres. Use :meth:`Volume.world_from_zyx` to map array-order
  indices (for example marching-cubes vertices) to LPS mm.
* ``spacing`` is ``(sz, sy, sx)`` in millimetres, in array order, matching ``hu.shape``.
* NIfTI files are written with the RAS affine NIfTI expects (LPS with x and y negated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: HU value given to padding and to voxels outside the scanner's field of view. It is air,
#: so padding can never pass as tissue, and it is the value most scanners store for air.
AIR_HU = -1024

#: Flip from LPS (DICOM) to RAS (NIfTI) world coordinates.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Finding:
    """One QC observation about a series or a file.

    Parameters
    ----------
    code : str
        Short machine-readable code, e.g. ``"missing_slices"``, ``"gantry_tilt"``.
    severity : str
        ``"info"``, ``"warning"`` or ``"error"``.
    message : str
        Human-readable explanation, with numbers and units.
    files : list of str
        Paths concerned (may be empty).
    details : dict
        Extra machine-readable values (positions in mm, angles in degrees, ...).
    """

    code: str
    severity: str
    message: str
    files: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        from medscan.io.atomic import to_jsonable

        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "files": list(self.files),
            "details": to_jsonable(self.details),
        }


@dataclass
class Volume:
    """A CT volume in Hounsfield units with its geometry.

    Parameters
    ----------
    hu : numpy.ndarray
        HU values, shape ``(z, y, x)``; int16 when every slice's rescale is integral,
        float32 otherwise. Padding is :data:`AIR_HU`.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> patient LPS mm.
    case_id : str
        Pseudonymous case id (safe for paths and logs).
    patient_id : str
        Pseudonymous patient id shared by the series of one patient.
    metadata : dict
        Series metadata without patient identity (modality, manufacturer, kernel, ...).
    findings : list of Finding
        QC findings of the series.
    files : list of str
        Source file paths, in slice order.
    """

    hu: np.ndarray
    affine: np.ndarray
    case_id: str = "case"
    patient_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size ``(sz, sy, sx)`` in mm (array order), from the affine's columns."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)  # (sx, sy, sz)
        return float(norms[2]), float(norms[1]), float(norms[0])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (absolute determinant of the affine)."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def world_from_zyx(self, points_zyx: np.ndarray) -> np.ndarray:
        """Map array-order indices ``(z, y, x)`` (possibly fractional) to LPS mm.

        Parameters
        ----------
        points_zyx : numpy.ndarray
            Shape ``(n, 3)``.

        Returns
        -------
        numpy.ndarray
            Shape ``(n, 3)``, LPS coordinates in mm.
        """
        return world_from_zyx(self.affine, points_zyx)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS box (min, max) in mm enclosing all voxel centres."""
        nz, ny, nx = self.shape
        corners = np.array(
            [[z, y, x] for z in (0, nz - 1) for y in (0, ny - 1) for x in (0, nx - 1)], float
        )
        world = self.world_from_zyx(corners)
        return world.min(axis=0), world.max(axis=0)

    def nifti_affine(self) -> np.ndarray:
        """RAS affine for NIfTI, mapping ``(i, j, k)`` with data stored as ``(x, y, z)``."""
        return LPS_TO_RAS @ self.affine

    def to_nifti(self, path: str | Path, data: np.ndarray | None = None) -> Path:
        """Atomically write ``data`` (default: the HU array) as NIfTI with this geometry.

        Parameters
        ----------
        path : str or Path
            Output file (``.nii`` or ``.nii.gz``).
        data : numpy.ndarray, optional
            Array of shape ``(z, y, x)`` on this grid, e.g. a label map.

        Returns
        -------
        Path
            The written path.
        """
        from medscan.io.nifti import write_nifti

        array = self.hu if data is None else data
        if array.shape != self.hu.shape:
            raise ValueError(f"data shape {array.shape} does not match volume {self.hu.shape}")
        return write_nifti(path, array, self.nifti_affine())

    @classmethod
    def from_nifti(cls, path: str | Path, case_id: str | None = None) -> Volume:
        """Read a NIfTI written by :meth:`to_nifti` (or any NIfTI) back into a Volume."""
        import nibabel as nib

        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj).transpose(2, 1, 0)
        affine = LPS_TO_RAS @ img.affine
        name = Path(path).name.split(".")[0]
        return cls(hu=np.ascontiguousarray(data), affine=affine, case_id=case_id or name)


def world_from_zyx(affine: np.ndarray, points_zyx: np.ndarray) -> np.ndarray:
    """Map array-order indices ``(z, y, x)`` to world coordinates through ``affine``.

    Parameters
    ----------
    affine : numpy.ndarray
        4x4 matrix acting on ``(i, j, k, 1)`` = ``(x, y, z, 1)``.
    points_zyx : numpy.ndarray
        Shape ``(n, 3)`` indices in array order.

    Returns
    -------
    numpy.ndarray
        Shape ``(n, 3)`` world coordinates.
    """
    pts = np.asarray(points_zyx, dtype=np.float64)[:, ::-1]
    return pts @ affine[:3, :3].T + affine[:3, 3]

