"""Writers and readers of medscan's output layout (atomic writes, case folders, batch index)."""

from medscan.io.atomic import atomic_write, read_json, write_bytes, write_json, write_text
from medscan.io.case import (
    INDEX,
    INDEX_COLUMNS,
    LABELS,
    MANIFEST,
    MESH_DIR,
    METRICS,
    PREVIEW,
    QC,
    VOLUME,
    is_case_dir,
    iter_case_dirs,
    read_case,
    read_index,
    read_manifest,
)

__all__ = [
    "INDEX",
    "INDEX_COLUMNS",
    "LABELS",
    "MANIFEST",
    "MESH_DIR",
    "METRICS",
    "PREVIEW",
    "QC",
    "VOLUME",
    "atomic_write",
    "is_case_dir",
    "iter_case_dirs",
    "read_case",
    "read_index",
    "read_json",
    "read_manifest",
    "write_bytes",
    "write_json",
    "write_text",
]
