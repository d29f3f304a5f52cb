"""The segment job's output layout: names, and readers for case folders and batch folders.

::

    DIR/<case_id>/volume.nii.gz        HU, RAS affine (= dcm2niix's)
    DIR/<case_id>/labels.nii.gz        uint8 label map, same grid
    DIR/<case_id>/meshes/<tissue>.<fmt>
    DIR/<case_id>/metrics.json, qc.json, preview.png, manifest.json
    DIR/index.csv                      one row per case (rebuilt from the manifests)

Folders whose name starts with ``.`` (temporary case folders, Hydra logs, locks) are never
cases.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medscan.ct.measure import LUNG_KEYS
from medscan.io.atomic import read_json

VOLUME = "volume.nii.gz"
LABELS = "labels.nii.gz"
METRICS = "metrics.json"
QC = "qc.json"
PREVIEW = "preview.png"
MANIFEST = "manifest.json"
MESH_DIR = "meshes"
INDEX = "index.csv"

#: Columns of ``index.csv``, in order.
INDEX_COLUMNS = ("case_id", "status", "reason", *LUNG_KEYS, "seconds")


def is_case_dir(path: Path) -> bool:
    """True for a finished case folder (not hidden, has a manifest)."""
    return path.is_dir() and not path.name.startswith(".") and (path / MANIFEST).is_file()


def iter_case_dirs(output: str | Path) -> Iterator[Path]:
    """Finished case folders under a batch output folder, sorted by name."""
    root = Path(output)
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if is_case_dir(child):
            yield child


def read_manifest(case_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a case folder."""
    return read_json(Path(case_dir) / MANIFEST)


def read_case(case_dir: str | Path, *, load_arrays: bool = False) -> dict[str, Any]:
    """Read one case folder.

    Parameters
    ----------
    case_dir : str or Path
        ``DIR/<case_id>``.
    load_arrays : bool
        Also load ``volume`` and ``labels`` as :class:`~medscan.volume.Volume` objects
        (``labels.hu`` holds the label map).

    Returns
    -------
    dict
        ``case_id, status, reason, manifest, metrics (or None), qc (or None), paths`` (name ->
        Path of the files present, meshes as ``{tissue: {fmt: Path}}``) and, with
        ``load_arrays``, ``volume`` and ``labels``.
    """
    folder = Path(case_dir)
    manifest = read_manifest(folder)
    out: dict[str, Any] = {
        "case_id": manifest.get("case_id", folder.name),
        "status": manifest.get("status"),
        "reason": manifest.get("reason", ""),
        "manifest": manifest,
        "metrics": read_json(folder / METRICS) if (folder / METRICS).is_file() else None,
        "qc": read_json(folder / QC) if (folder / QC).is_file() else None,
    }
    paths: dict[str, Any] = {}
    for key, name in (("volume", VOLUME), ("labels", LABELS), ("preview", PREVIEW)):
        if (folder / name).is_file():
            paths[key] = folder / name
    meshes: dict[str, dict[str, Path]] = {}
    for entry in manifest.get("meshes", []):
        p = folder / entry["path"]
        if p.is_file():
            meshes.setdefault(entry["tissue"], {})[entry["format"]] = p
    paths["meshes"] = meshes
    out["paths"] = paths
    if load_arrays:
        from medscan.volume import Volume

        out["volume"] = Volume.from_nifti(folder / VOLUME, case_id=out["case_id"])
        if (folder / LABELS).is_file():
            out["labels"] = Volume.from_nifti(folder / LABELS, case_id=out["case_id"])
    return out


def read_index(output: str | Path) -> list[dict[str, str]]:
    """Rows of ``DIR/index.csv`` (strings, as written)."""
    with open(Path(output) / INDEX, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
