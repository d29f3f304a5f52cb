"""The case folder's layout: every file name of medscan's CT output contract, in one place.

::

    DIR/<case_id>/volume.nii.gz        HU, RAS affine (= dcm2niix's)
    DIR/<case_id>/labels.nii.gz        uint8 label map, same grid
    DIR/<case_id>/meshes/<tissue>.<fmt>
    DIR/<case_id>/metrics.json, qc.json, preview.png, manifest.json
    DIR/<case_id>/report.html          self-contained report (report=true, the default)
    DIR/<case_id>/seg.dcm              DICOM SEG on the source slices (outputs=[..., dicom_seg])
    DIR/index.csv                      one row per case (rebuilt from the manifests)
    DIR/index.html, DIR/report.html    gallery and batch report (rebuilt with the index)

Folders whose name starts with ``.`` (temporary case folders, Hydra logs, locks) are never
cases. :func:`read_manifest` is the one reader of ``manifest.json`` (the case writer's commit
and :func:`medscan.io.case.read_case` use it). Imports only :mod:`medscan.io.atomic`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medscan.io.atomic import read_json

VOLUME = "volume.nii.gz"
LABELS = "labels.nii.gz"
METRICS = "metrics.json"
QC = "qc.json"
PREVIEW = "preview.png"
MANIFEST = "manifest.json"
MESH_DIR = "meshes"
INDEX = "index.csv"
SEG = "seg.dcm"
REPORT = "report.html"

#: Keys of the lung metrics in ``metrics.json`` (null when no lungs were found); the lung
#: columns of ``index.csv``. Part of the output contract, so defined here (``medscan.io``
#: never imports ``medscan.ct``); :mod:`medscan.ct.measure` fills them.
LUNG_KEYS = (
    "lung_volume_ml",
    "lung_left_ml",
    "lung_right_ml",
    "lung_complete",
    "mean_lung_hu",
    "laa950_percent",
    "perc15_hu",
)

#: Columns of ``index.csv``, in order.
INDEX_COLUMNS = ("case_id", "status", "reason", *LUNG_KEYS, "seconds")

#: Decimals of each number column of ``index.csv``, fixed per column so that a column reads
#: alike in every row (``4486.00`` beside ``5613.58``) and no cell shows false precision:
#: volumes in mL to 0.01 mL (a voxel of a 0.7 x 0.7 x 1 mm grid is 0.0005 mL), HU to 0.1
#: (Perc15 is an interpolated percentile: ``-945.0``), %LAA-950 to 0.001 % and seconds to
#: 0.01 s. The batch report's index table shows the same text (:func:`format_index_cell`);
#: ``metrics.json`` and the manifest hold the full values.
INDEX_DECIMALS = {
    "lung_volume_ml": 2,
    "lung_left_ml": 2,
    "lung_right_ml": 2,
    "mean_lung_hu": 1,
    "laa950_percent": 3,
    "perc15_hu": 1,
    "seconds": 2,
}


def format_index_cell(column: str, value: Any) -> str:
    """The text of ``value`` in ``column`` of ``index.csv`` (and the batch report's table).

    Numbers of a column in :data:`INDEX_DECIMALS` get that many decimals (fixed point, never
    ``-0.0``); None and non-finite numbers are blank; bools and text are ``str(value)``; a
    number of another column keeps ``str(value)``.
    """
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if not math.isfinite(value):
        return ""
    decimals = INDEX_DECIMALS.get(column)
    if decimals is None:
        return str(value)
    text = f"{float(value):.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def read_manifest(case_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a case folder.

    Raises
    ------
    OSError, ValueError
        When it is missing or not JSON.
    """
    return read_json(Path(case_dir) / MANIFEST)


def mesh_path(tissue: str, fmt: str) -> str:
    """Path of a mesh inside the case folder, e.g. ``"meshes/lung_left.ply"``."""
    return f"{MESH_DIR}/{tissue}.{fmt}"
