"""npe2 reader: medscan case folders, batch folders, single NIfTI/mesh files and DICOM folders.

What opens, and as what (see ``docs/napari.md``):

* a case folder (``manifest.json`` inside: :func:`medscan.io.is_case_dir`), read by
  :func:`medscan.io.read_case` (the one reader of the output contract): the HU volume (Image),
  the label map (Labels with tissue names and colours), every mesh (Surface, one per tissue, in
  its colour), metrics and their tables in ``layer.metadata["medscan"]`` and label features;
* a batch output folder (``index.csv`` or case sub-folders): every case, the first visible;
* one ``*.nii``/``*.nii.gz`` (``labels*`` -> Labels, otherwise Image) or one mesh file;
* a folder of DICOM files: the first CT series, through :func:`medscan.dicom.load_path`;
* one DICOM Segmentation file (``seg.dcm`` from ``outputs=[nifti,dicom_seg]`` or another tool's
  SEG): a Labels layer in the SEG's geometry (:func:`medscan.io.dicom_seg.read_seg`).

All layers share the medscan world (LPS mm in array order): see :mod:`medscan.napari.geometry`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medscan.io.dicom_seg import is_dicom_seg
from medscan.io.layout import INDEX
from medscan.io.tables import label_metrics, metric_tables
from medscan.napari.layers import (
    MESH_FORMATS,
    LayerDataTuple,
    image_layer,
    label_table,
    labels_layer,
    load_mesh,
    surface_layer,
)

if TYPE_CHECKING:
    from medscan.case import CaseResult

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MESH_SUFFIXES = tuple(f".{fmt}" for fmt in MESH_FORMATS)


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerDataTuple]] | None:
    """Return :func:`read` when medscan understands every path given, else ``None``.

    Parameters
    ----------
    path : str or list of str
        What napari was asked to open.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(classify(p) for p in paths):
        return None
    return read


def classify(path: str | Path) -> str | None:
    """Say what medscan would open ``path`` as, without reading much of it.

    Returns
    -------
    str or None
        ``"case"``, ``"batch"``, ``"nifti"``, ``"mesh"``, ``"dicom"``, ``"seg"``, or ``None``.
    """
    p = Path(path)
    name = p.name.lower()
    if p.is_file():
        if name.endswith(NIFTI_SUFFIXES):
            return "nifti"
        if name.endswith(MESH_SUFFIXES):
            return "mesh"
        if is_dicom_seg(p):
            return "seg"
        return None
    if not p.is_dir():
        return None
    if is_case_folder(p):
        return "case"
    if (p / INDEX).is_file() or any(is_case_folder(c) for c in _subdirs(p)):
        return "batch"
    if _looks_like_dicom_folder(p):
        return "dicom"
    return None


def is_case_folder(path: Path) -> bool:
    """True for a case folder of the output contract (:func:`medscan.io.is_case_dir`)."""
    from medscan.io import is_case_dir

    return is_case_dir(Path(path))


def read(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Read one or several paths into napari layer-data tuples (see module docstring)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers: list[LayerDataTuple] = []
    for p in paths:
        kind = classify(p)
        if kind == "case":
            layers += read_case(p)
        elif kind == "batch":
            layers += read_batch(p)
        elif kind == "nifti":
            layers += read_nifti(p)
        elif kind == "mesh":
            layers += read_mesh(p)
        elif kind == "dicom":
            layers += read_dicom(p)
        elif kind == "seg":
            layers += read_dicom_seg(p)
        else:
            raise ValueError(f"{p}: not a medscan case, batch folder, NIfTI, mesh or DICOM folder")
    return layers


def _subdirs(path: Path) -> list[Path]:
    return sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith("."))


def _looks_like_dicom_folder(path: Path, limit: int = 64) -> bool:
    """True when one of the first ``limit`` files is ``*.dcm``, a DICOMDIR or starts with DICM.

    Stops early, so pointing napari at a huge unrelated tree stays cheap.
    """
    seen = 0
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            file = Path(folder) / name
            if file.suffix.lower() == ".dcm" or name.upper() == "DICOMDIR":
                return True
            try:
                with file.open("rb") as handle:
                    head = handle.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM":
                return True
            seen += 1
            if seen >= limit:
                return False
    return False


def _mesh_files(result: CaseResult) -> dict[str, Path]:
    """``{tissue: mesh path}`` of a case read back, one file per tissue (ply > obj > stl > glb)."""
    chosen: dict[str, Path] = {}
    for tissue, by_format in (result.files.get("meshes") or {}).items():
        for fmt in MESH_FORMATS:
            if fmt in by_format:
                chosen[tissue] = Path(by_format[fmt])
                break
    return dict(sorted(chosen.items()))


def _qc(result: CaseResult) -> dict[str, Any]:
    """The case's findings in the ``qc.json`` form."""
    return {
        "case_id": result.case_id,
        "loader_findings": [f.to_dict() for f in result.all_loader_findings()],
        "segmentation_findings": [f.to_dict() for f in result.findings],
    }


def _surface_arrays(surface: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices LPS mm, faces)`` of a trimesh surface or a ``(vertices, faces)`` pair."""
    if isinstance(surface, tuple):
        return np.asarray(surface[0]), np.asarray(surface[1])
    return np.asarray(surface.vertices), np.asarray(surface.faces)


def case_layers(
    result: CaseResult,
    visible: bool = True,
    image: bool = True,
    source: str | None = None,
    mesh_paths: dict[str, Path] | None = None,
) -> list[LayerDataTuple]:
    """Layers of one :class:`~medscan.case.CaseResult`: CT image, labels, one surface per mesh.

    The reader (a case folder read by :func:`medscan.io.read_case`) and the CT segmentation
    widget (a result of :func:`medscan.ct.analyse.analyse`) both show a case through this.

    Parameters
    ----------
    result : CaseResult
        The case; ``volume``, ``labels`` and ``surfaces`` become layers when present.
    visible : bool
        Initial visibility of the layers (batch folders show only their first case).
    image : bool
        Make the CT Image layer (the widget leaves the image it analysed alone).
    source : str, optional
        Where the case came from (``metadata["medscan"]["source"]``).
    mesh_paths : dict, optional
        ``{tissue: file}`` the surfaces were read from (``metadata["medscan"]["path"]``).

    Returns
    -------
    list of tuple
        Layer-data tuples named ``"<case_id> CT"``, ``"<case_id> labels"`` and
        ``"<case_id> <tissue> mesh"``. ``metadata["medscan"]`` of every layer holds
        ``case_id, case_dir, status, reason, metrics, tables`` (:func:`metric_tables`),
        ``manifest`` and ``qc``.
    """
    case_id = result.case_id
    metrics = dict(result.metrics or {})
    common: dict[str, Any] = {
        "case_id": case_id,
        "case_dir": str(result.folder) if result.folder is not None else None,
        "status": result.status,
        "reason": result.reason,
        "metrics": metrics,
        "tables": [t.to_dict() for t in metric_tables(metrics)],
        "manifest": dict(result.manifest or {}),
        "qc": _qc(result),
    }
    if source:
        common["source"] = source
    layers: list[LayerDataTuple] = []
    if image and result.volume is not None:
        volume = result.volume
        layers.append(
            image_layer(volume.hu, volume.affine, f"{case_id} CT", common, visible=visible)
        )
    table: dict[int, dict[str, Any]] = {}
    if result.labels is not None:
        table = label_table(result.labels.labels_dict())
        layers.append(
            labels_layer(
                result.labels.array,
                result.labels.affine,
                f"{case_id} labels",
                table,
                tissue_metrics=label_metrics(metrics),
                metadata=common,
                visible=visible,
            )
        )
    colors = {entry["name"]: entry["color"] for entry in table.values()}
    tissue_metrics = metrics.get("tissues") or {}
    for tissue, surface in result.surfaces.items():
        vertices, faces = _surface_arrays(surface)
        meta = {
            "case_id": case_id,
            "case_dir": common["case_dir"],
            "status": result.status,
            "tissue": tissue,
            "coordinate_space": (result.manifest or {}).get("coordinate_space", "LPS"),
            "units": (result.manifest or {}).get("units", "mm"),
            "metrics": tissue_metrics.get(tissue, {}),
        }
        if tissue in (mesh_paths or {}):
            meta["path"] = str(mesh_paths[tissue])
        if source:
            meta["source"] = source
        layers.append(
            surface_layer(
                vertices, faces, f"{case_id} {tissue} mesh", colors.get(tissue),
                metadata=meta, visible=visible,
            )
        )
    return layers


def read_case(path: str | Path, visible: bool = True) -> list[LayerDataTuple]:
    """Layers of one case folder, read by :func:`medscan.io.read_case` (the one case reader).

    Parameters
    ----------
    path : str or Path
        A case folder (``manifest.json`` inside; see ``docs/ct.md``).
    visible : bool
        Initial visibility of the layers (batch folders show only their first case).

    Returns
    -------
    list of tuple
        See :func:`case_layers`; a mesh file that cannot be read is skipped with a warning.
    """
    from medscan.io import read_case as read_case_folder

    folder = Path(path)
    result = read_case_folder(folder, arrays=True, meshes=False)
    if result.status != "ok":
        warnings.warn(
            f"{folder}: case status {result.status!r}: {result.reason or 'no reason given'}",
            stacklevel=2,
        )
    paths = _mesh_files(result)
    for tissue, mesh_path in paths.items():
        try:
            result.surfaces[tissue] = load_mesh(mesh_path)
        except (ValueError, OSError) as exc:
            warnings.warn(f"{mesh_path}: cannot read mesh ({exc}); skipped", stacklevel=2)
    layers = case_layers(result, visible=visible, mesh_paths=paths)
    if not layers:
        raise ValueError(f"{folder}: case folder has no volume, labels or meshes")
    return layers


def read_batch(path: str | Path) -> list[LayerDataTuple]:
    """Layers of every case in a batch output folder; only the first case starts visible.

    Cases are taken from ``index.csv`` when present (its order), else from the case folders
    (:func:`medscan.io.iter_case_dirs`). A case that cannot be read is reported with a warning
    naming it, and the others still open.
    """
    from medscan.io import iter_case_dirs, read_index

    folder = Path(path)
    case_dirs: list[Path] = []
    if (folder / INDEX).is_file():
        for row in read_index(folder):
            case_dir = folder / str(row.get("case_id") or "")
            if row.get("case_id") and case_dir.is_dir():
                case_dirs.append(case_dir)
    if not case_dirs:
        case_dirs = list(iter_case_dirs(folder))
    layers: list[LayerDataTuple] = []
    for case_dir in case_dirs:
        try:
            layers += read_case(case_dir, visible=not layers)
        except Exception as exc:  # any unreadable case: report it, open the others
            warnings.warn(f"{case_dir}: skipped ({type(exc).__name__}: {exc})", stacklevel=2)
    if not layers:
        raise ValueError(f"{folder}: no readable case in this batch folder")
    return layers


def _parent_case(path: Path) -> CaseResult | None:
    """The case a file sits in (``case/labels.nii.gz``, ``case/meshes/x.ply``), without arrays."""
    from medscan.io import read_case as read_case_folder

    for folder in (path.parent, path.parent.parent):
        if is_case_folder(folder):
            try:
                return read_case_folder(folder, arrays=False)
            except (OSError, ValueError) as exc:
                warnings.warn(f"{folder}: unreadable case ({exc}); file read alone", stacklevel=2)
                return None
    return None


def read_nifti(path: str | Path) -> list[LayerDataTuple]:
    """One NIfTI: a label map when its name starts with ``labels``, otherwise a HU image.

    Inside a case folder the label names, colours and metrics come from that case.
    """
    from medscan.volume import LabelMap, Volume

    p = Path(path)
    case = _parent_case(p)
    case_id = case.case_id if case is not None else p.name.split(".")[0]
    meta: dict[str, Any] = {"case_id": case_id, "path": str(p)}
    if case is not None:
        meta["manifest"] = case.manifest
    stem = p.name.split(".")[0]
    if p.name.lower().startswith("labels"):
        table = (case.manifest.get("labels") if case is not None else None) or None
        labels = LabelMap.from_nifti(p, table, case_id=case_id)
        metrics = case.metrics if case is not None else {}
        return [
            labels_layer(
                labels.array,
                labels.affine,
                f"{case_id} {stem}",
                label_table(labels.labels_dict()),
                tissue_metrics=label_metrics(metrics),
                metadata=meta,
            )
        ]
    volume = Volume.from_nifti(p, case_id=case_id)
    return [image_layer(volume.hu, volume.affine, f"{case_id} {stem}", meta)]


def read_dicom_seg(path: str | Path) -> list[LayerDataTuple]:
    """One DICOM SEG as a Labels layer (segment names and display colours as the label table)."""
    from medscan.io.dicom_seg import read_seg

    p = Path(path)
    case = _parent_case(p)
    labels = read_seg(p, case_id=case.case_id if case is not None else p.stem)
    meta = {"case_id": labels.case_id, "source": "dicom_seg"}
    return [labels_layer(labels.array, labels.affine, f"{labels.case_id} seg",
                         label_table(labels.labels_dict()), metadata=meta)]


def read_mesh(path: str | Path) -> list[LayerDataTuple]:
    """One mesh file (LPS mm), coloured from its case when it sits in a case folder."""
    p = Path(path)
    case = _parent_case(p)
    labels = case.manifest.get("labels") if case is not None else None
    colors = {e["name"]: e["color"] for e in label_table(labels).values()}
    case_id = case.case_id if case is not None else ""
    vertices, faces = load_mesh(p)
    name = f"{case_id} {p.stem} mesh".strip()
    meta = {"case_id": case_id, "tissue": p.stem, "path": str(p)}
    return [surface_layer(vertices, faces, name, colors.get(p.stem), metadata=meta)]


def load_options() -> dict[str, bool]:
    """The ``medscan segment`` loader settings that change a case (``uniform``, ``free_text``).

    Their defaults (``conf/segment.yaml``): DICOM folders open as the job loads them, and the
    CT segmentation widget records them in its provenance.
    """
    from medscan.defaults import segment_defaults

    return {key: bool(segment_defaults(key)) for key in ("uniform", "free_text")}


def read_dicom(path: str | Path) -> list[LayerDataTuple]:
    """The first CT series under a DICOM folder, as a HU image (via the medscan loader).

    Loaded with the ``medscan segment`` defaults (``uniform``), recorded in
    ``metadata["medscan"]["load"]`` so the CT segmentation widget's provenance says how.
    """
    from medscan.dicom import load_path

    load = load_options()
    volume = load_path(path, uniform=load["uniform"])
    meta = {
        "case_id": volume.case_id,
        "patient_id": volume.patient_id,  # pseudonymous (keyed HMAC), for the saved manifest
        "path": str(path),
        "findings": [f.to_dict() for f in volume.findings],
        "series": dict(volume.metadata),
        "files": list(volume.files),
        "load": load,
    }
    return [image_layer(volume.hu, volume.affine, f"{volume.case_id} CT", meta)]
