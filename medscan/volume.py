"""A CT volume as a set of points in patient space.

Conventions (used by every stage of medscan):

* ``hu`` is indexed ``hu[k, j, i]`` = ``(z, y, x)``: slice, row, column.
* ``affine`` is the 4x4 matrix that maps the homogeneous voxel index ``(i, j, k, 1)``
  (column, row, slice: the DICOM/ITK/NIfTI order, *not* the array order) to patient
  **LPS** coordinates in millimetres. Use :meth:`Volume.world_from_zyx` to map array-order
  indices (for example marching-cubes vertices) to LPS mm.
* ``spacing`` is ``(sz, sy, sx)`` in millimetres, in array order, matching ``hu.shape``.
* ``spacing`` and ``voxel_volume_ml`` are *derived* from the affine (:class:`Grid`), never
  stored, so they cannot disagree with it after resampling or reorientation.
* NIfTI files are written with the RAS affine NIfTI expects (LPS with x and y negated).

:class:`Volume` (HU) and :class:`LabelMap` (uint8 labels with a name/colour table) share that
geometry (:class:`Grid`), the idea of TorchIO's ``ScalarImage``/``LabelMap``: a label image is
never a bare array passed through the HU writer.

This module imports only the leaf writers :mod:`medscan.io.atomic` and :mod:`medscan.io.nifti`
(which import nothing of medscan above them); :mod:`medscan.io.case` builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medscan.io.atomic import to_jsonable
from medscan.io.nifti import write_nifti

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
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "files": list(self.files),
            "details": to_jsonable(self.details),
        }


class Grid:
    """Geometry shared by :class:`Volume` and :class:`LabelMap`.

    Subclasses hold ``affine`` (4x4 index ``(i, j, k, 1)`` -> LPS mm) and an array indexed
    ``(z, y, x)``; everything else here is derived from those two.
    """

    affine: np.ndarray

    def _grid_array(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(self._grid_array().shape)  # type: ignore[return-value]

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

    def same_grid(self, other: Grid, atol: float = 1e-4) -> bool:
        """True when ``other`` has this shape and affine (within ``atol`` mm)."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine, other.affine, atol=atol))


@dataclass
class Volume(Grid):
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

    def _grid_array(self) -> np.ndarray:
        return self.hu

    def to_nifti(self, path: str | Path) -> Path:
        """Atomically write the HU array as NIfTI with this geometry (:mod:`medscan.io.nifti`).

        Parameters
        ----------
        path : str or Path
            Output file (``.nii`` or ``.nii.gz``).

        Returns
        -------
        Path
            The written path.
        """
        return write_nifti(path, self.hu, self.nifti_affine())

    @classmethod
    def from_nifti(cls, path: str | Path, case_id: str | None = None) -> Volume:
        """Read a NIfTI written by :meth:`to_nifti` (or any NIfTI) back into a Volume."""
        data, affine = _read_nifti(path)
        name = Path(path).name.split(".")[0]
        return cls(hu=data, affine=affine, case_id=case_id or name)


@dataclass(frozen=True)
class Label:
    """One entry of a label table.

    Parameters
    ----------
    value : int
        Voxel value in the label map (1..255; 0 is background).
    name : str
        Label name (mesh file names use it).
    color : tuple of int
        RGB, 0..255.
    """

    value: int
    name: str
    color: tuple[int, int, int]


@dataclass
class LabelMap(Grid):
    """A uint8 label image with its geometry and its label table.

    Parameters
    ----------
    array : numpy.ndarray
        uint8, shape ``(z, y, x)``; 0 is background.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> patient LPS mm (usually the :class:`Volume`'s).
    labels : dict of int to Label
        The label table (values that may occur in ``array``).
    case_id : str
        Pseudonymous case id.

    Raises
    ------
    ValueError
        When ``array`` is not a 3-D uint8 array or ``affine`` not 4x4, or a table key differs
        from its label's value.
    """

    array: np.ndarray
    affine: np.ndarray
    labels: dict[int, Label] = field(default_factory=dict)
    case_id: str = "case"

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or self.array.dtype != np.uint8:
            raise ValueError(f"label map must be a 3-D uint8 array, got {self.array.ndim}-D "
                             f"{self.array.dtype}")
        if np.shape(self.affine) != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {np.shape(self.affine)}")
        bad = [k for k, v in self.labels.items() if k != v.value]
        if bad:
            raise ValueError(f"label table keys {bad} differ from their labels' values")

    def _grid_array(self) -> np.ndarray:
        return self.array

    def by_name(self, name: str) -> Label:
        """The label called ``name``.

        Raises
        ------
        KeyError
            Naming the known labels.
        """
        for label in self.labels.values():
            if label.name == name:
                return label
        known = [v.name for v in self.labels.values()]
        raise KeyError(f"no label called {name!r} (known: {known})")

    def mask(self, name: str) -> np.ndarray:
        """Mask (bool, ``(z, y, x)``) of the label called ``name``."""
        return self.array == self.by_name(name).value

    def labels_dict(self) -> dict[str, dict[str, Any]]:
        """The label table in the manifest form ``{"<id>": {"name", "color"}}``."""
        return {str(v): {"name": lab.name, "color": list(lab.color)}
                for v, lab in sorted(self.labels.items())}

    @staticmethod
    def table_from_dict(table: dict[str, Any]) -> dict[int, Label]:
        """The label table from its manifest form (inverse of :meth:`labels_dict`)."""
        return {int(k): Label(int(k), str(v["name"]), tuple(int(c) for c in v["color"]))
                for k, v in table.items()}  # type: ignore[misc]

    def to_nifti(self, path: str | Path) -> Path:
        """Atomically write the label map as uint8 NIfTI with this geometry.

        Returns
        -------
        Path
            The written path.
        """
        return write_nifti(path, self.array, self.nifti_affine())

    @classmethod
    def from_nifti(cls, path: str | Path, labels: dict[int, Label] | dict[str, Any] | None = None,
                   case_id: str | None = None) -> LabelMap:
        """Read a label NIfTI (e.g. ``labels.nii.gz``).

        Parameters
        ----------
        path : str or Path
            NIfTI file of integer labels 0..255.
        labels : dict, optional
            The label table, as ``{int: Label}`` or in the manifest form
            (:meth:`labels_dict`). Default: ``label_<value>`` for each value present, grey.
        case_id : str, optional
            Default: the file name without suffixes.

        Raises
        ------
        ValueError
            When the file holds values outside 0..255 or non-integral values.
        """
        data, affine = _read_nifti(path)
        if data.dtype != np.uint8:
            if data.size and (data.min() < 0 or data.max() > 255
                              or not np.array_equal(data, np.round(data))):
                raise ValueError(f"{Path(path).name}: not a label map (values outside 0..255 "
                                 "or not integral)")
            data = data.astype(np.uint8)
        if labels is None:
            table = {int(v): Label(int(v), f"label_{int(v)}", (128, 128, 128))
                     for v in np.unique(data) if v}
        elif all(isinstance(v, Label) for v in labels.values()):
            table = dict(labels)  # type: ignore[arg-type]
        else:
            table = cls.table_from_dict(labels)  # type: ignore[arg-type]
        name = Path(path).name.split(".")[0]
        return cls(array=data, affine=affine, labels=table, case_id=case_id or name)


def _read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(data ``(z, y, x)`` C-contiguous, LPS affine) of a NIfTI file (nibabel)."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).transpose(2, 1, 0)
    return np.ascontiguousarray(data), LPS_TO_RAS @ img.affine


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

