"""npe2 reader: medscan case folders, batch folders, single NIfTI/mesh files and DICOM folders.

What opens, and as what (see ``docs/napari.md``):

* a case folder from ``medscan segment`` (``manifest.json`` and/or ``volume.nii.gz``): the HU
  volume (Image), the label map (Labels with tissue names and colours), every mesh (Surface,
  one per tissue, in its colour), metrics in ``layer.metadata["medscan"]`` and label features;
* a batch output folder (``index.csv`` or case sub-folders): every case, the first visible;
* one ``*.nii``/``*.nii.gz`` (``labels*`` -> Labels, otherwise Image) or one mesh file;
* a folder of DICOM files: the first CT series, through :func:`medscan.dicom.load_path`;
* one DICOM Segmentation file (``seg.dcm`` from ``outputs=[nifti,dicom_seg]`` or another tool's
  SEG): a Labels layer in the SEG's geometry (:func:`medscan.io.dicom_seg.read_seg`).

All layers share the medscan world (LPS mm in array order): see :mod:`medscan.napari.geometry`.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medscan.io.dicom_seg import is_dicom_seg
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
    if (p / "index.csv").is_file() or any(is_case_folder(c) for c in _subdirs(p)):
        return "batch"
    if _looks_like_dicom_folder(p):
        return "dicom"
    return None


def is_case_folder(path: Path) -> bool:
    """True for a folder in the ``medscan segment`` case layout."""
    return (path / "manifest.json").is_file() or (path / "volume.nii.gz").is_file()


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


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: unreadable JSON ({exc}); ignored", stacklevel=2)
        return {}


def _read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(array (z, y, x), LPS affine)`` of a NIfTI (via ``Volume.from_nifti``)."""
    from medscan.volume import Volume

    volume = Volume.from_nifti(path)
    return volume.hu, volume.affine


def case_meshes(folder: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """``{tissue: mesh path}`` of a case, one file per tissue (ply > obj > stl > glb)."""
    candidates: list[Path] = []
    for entry in manifest.get("meshes") or []:
        rel = entry if isinstance(entry, str) else (entry.get("path") or entry.get("file"))
        if rel:
            candidates.append(folder / rel)
    mesh_dir = folder / "meshes"
    if mesh_dir.is_dir():
        candidates += sorted(mesh_dir.iterdir())
    chosen: dict[str, Path] = {}
    rank = {f".{fmt}": i for i, fmt in enumerate(MESH_FORMATS)}
    for path in candidates:
        suffix = path.suffix.lower()
        if suffix not in rank or not path.is_file():
            continue
        tissue = path.stem
        if tissue not in chosen or rank[suffix] < rank[chosen[tissue].suffix.lower()]:
            chosen[tissue] = path
    return dict(sorted(chosen.items()))


def read_case(path: str | Path, visible: bool = True) -> list[LayerDataTuple]:
    """Layers of one case folder: CT image, labels, one surface per mesh.

    Parameters
    ----------
    path : str or Path
        A ``medscan segment`` case folder.
    visible : bool
        Initial visibility of the layers (batch folders show only their first case).

    Returns
    -------
    list of tuple
        Layer-data tuples named ``"<case_id> CT"``, ``"<case_id> labels"`` and
        ``"<case_id> <tissue> mesh"``.
    """
    folder = Path(path)
    manifest = _read_json(folder / "manifest.json")
    metrics = _read_json(folder / "metrics.json")
    qc = _read_json(folder / "qc.json")
    case_id = str(manifest.get("case_id") or folder.name)
    status = manifest.get("status", "ok")
    if status != "ok":
        warnings.warn(
            f"{folder}: case status {status!r}: {manifest.get('reason') or 'no reason given'}",
            stacklevel=2,
        )
    table = label_table(manifest.get("labels"))
    common = {
        "case_id": case_id,
        "case_dir": str(folder),
        "status": status,
        "metrics": metrics,
        "tables": [t.to_dict() for t in metric_tables(metrics)],
        "manifest": manifest,
        "qc": qc,
    }
    layers: list[LayerDataTuple] = []
    volume_path = folder / "volume.nii.gz"
    if volume_path.is_file():
        hu, affine = _read_volume(volume_path)
        layers.append(image_layer(hu, affine, f"{case_id} CT", common, visible=visible))
    labels_path = folder / "labels.nii.gz"
    if labels_path.is_file():
        labels, affine = _read_volume(labels_path)
        if not table:
            table = {int(v): {"name": f"label {v}", "color": None} for v in np.unique(labels) if v}
            table = label_table(table)
        layers.append(
            labels_layer(
                labels,
                affine,
                f"{case_id} labels",
                table,
                tissue_metrics=label_metrics(metrics),
                metadata=common,
                visible=visible,
            )
        )
    colors = {entry["name"]: entry["color"] for entry in table.values()}
    for tissue, mesh_path in case_meshes(folder, manifest).items():
        try:
            vertices, faces = load_mesh(mesh_path)
        except (ValueError, OSError) as exc:
            warnings.warn(f"{mesh_path}: cannot read mesh ({exc}); skipped", stacklevel=2)
            continue
        meta = {
            "case_id": case_id,
            "case_dir": str(folder),
            "tissue": tissue,
            "path": str(mesh_path),
            "coordinate_space": manifest.get("coordinate_space", "LPS"),
            "units": manifest.get("units", "mm"),
            "metrics": (metrics.get("tissues") or {}).get(tissue, {}),
        }
        layers.append(
            surface_layer(
                vertices,
                faces,
                f"{case_id} {tissue} mesh",
                colors.get(tissue),
                metadata=meta,
                visible=visible,
            )
        )
    if not layers:
        raise ValueError(f"{folder}: case folder has no volume, labels or meshes")
    return layers


def read_batch(path: str | Path) -> list[LayerDataTuple]:
    """Layers of every case in a batch output folder; only the first case starts visible.

    Cases are taken from ``index.csv`` when present (its order), else from the sub-folders. A
    case that cannot be read is reported with a warning naming it, and the others still open.
    """
    folder = Path(path)
    case_dirs: list[Path] = []
    index = folder / "index.csv"
    if index.is_file():
        with index.open(newline="") as handle:
            for row in csv.DictReader(handle):
                case_dir = folder / str(row.get("case_id", ""))
                if row.get("case_id") and case_dir.is_dir():
                    case_dirs.append(case_dir)
    if not case_dirs:
        case_dirs = [c for c in _subdirs(folder) if is_case_folder(c)]
    layers: list[LayerDataTuple] = []
    for case_dir in case_dirs:
        try:
            layers += read_case(case_dir, visible=not layers)
        except Exception as exc:  # any unreadable case: report it, open the others
            warnings.warn(f"{case_dir}: skipped ({type(exc).__name__}: {exc})", stacklevel=2)
    if not layers:
        raise ValueError(f"{folder}: no readable case in this batch folder")
    return layers


def _parent_manifest(path: Path) -> tuple[Path | None, dict[str, Any]]:
    for folder in (path.parent, path.parent.parent):
        if (folder / "manifest.json").is_file():
            return folder, _read_json(folder / "manifest.json")
    return None, {}


def read_nifti(path: str | Path) -> list[LayerDataTuple]:
    """One NIfTI: a label map when its name starts with ``labels``, otherwise a HU image."""
    p = Path(path)
    folder, manifest = _parent_manifest(p)
    case_id = str(manifest.get("case_id") or p.name.split(".")[0])
    array, affine = _read_volume(p)
    meta = {"case_id": case_id, "path": str(p), "manifest": manifest}
    stem = p.name.split(".")[0]
    if p.name.lower().startswith("labels"):
        table = label_table(manifest.get("labels"))
        if not table:
            table = label_table({int(v): {"name": f"label {v}"} for v in np.unique(array) if v})
        metrics = _read_json(folder / "metrics.json") if folder else {}
        return [
            labels_layer(
                array.astype(np.int32, copy=False) if array.dtype.kind == "f" else array,
                affine,
                f"{case_id} {stem}",
                table,
                tissue_metrics=label_metrics(metrics),
                metadata=meta,
            )
        ]
    return [image_layer(array, affine, f"{case_id} {stem}", meta)]


def read_dicom_seg(path: str | Path) -> list[LayerDataTuple]:
    """One DICOM SEG as a Labels layer (segment names and display colours as the label table)."""
    from medscan.io.dicom_seg import read_seg

    p = Path(path)
    _, manifest = _parent_manifest(p)
    labels = read_seg(p, case_id=str(manifest.get("case_id") or p.stem))
    table = label_table({v: {"name": lab.name, "color": list(lab.color)}
                         for v, lab in labels.labels.items()})
    meta = {"case_id": labels.case_id, "source": "dicom_seg"}
    return [labels_layer(labels.array, labels.affine, f"{labels.case_id} seg", table,
                         metadata=meta)]


def read_mesh(path: str | Path) -> list[LayerDataTuple]:
    """One mesh file (LPS mm), coloured from its case manifest when it sits in a case folder."""
    p = Path(path)
    _, manifest = _parent_manifest(p)
    colors = {e["name"]: e["color"] for e in label_table(manifest.get("labels")).values()}
    case_id = str(manifest.get("case_id") or "")
    vertices, faces = load_mesh(p)
    name = f"{case_id} {p.stem} mesh".strip()
    meta = {"case_id": case_id, "tissue": p.stem, "path": str(p)}
    return [surface_layer(vertices, faces, name, colors.get(p.stem), metadata=meta)]


def read_dicom(path: str | Path) -> list[LayerDataTuple]:
    """The first CT series under a DICOM folder, as a HU image (via the medscan loader)."""
    from medscan.dicom import load_path

    volume = load_path(path)
    meta = {
        "case_id": volume.case_id,
        "path": str(path),
        "findings": [f.to_dict() for f in volume.findings],
        "series": dict(volume.metadata),
        "files": list(volume.files),
    }
    return [image_layer(volume.hu, volume.affine, f"{volume.case_id} CT", meta)]
