"""Writers and readers of medscan's output layout (atomic writes, case folders, batch index).

Names are loaded on first use (PEP 562): the leaf writers (:mod:`medscan.io.atomic`,
:mod:`medscan.io.nifti`) can then be imported by :mod:`medscan.volume` without pulling in
:mod:`medscan.io.case`, which itself builds on :mod:`medscan.volume` -- one direction, no cycle.
``medscan.io`` never imports ``medscan.ct`` (tests/test_architecture.py).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "medscan.io.atomic": ("atomic_write", "read_json", "to_jsonable", "write_bytes",
                          "write_json", "write_text"),
    "medscan.io.layout": ("INDEX", "INDEX_COLUMNS", "LABELS", "LUNG_KEYS", "MANIFEST",
                          "MESH_DIR", "METRICS", "PREVIEW", "QC", "VOLUME", "read_manifest"),
    "medscan.io.case": ("OUTPUT_WRITERS", "is_case_dir", "iter_case_dirs", "read_case",
                        "read_index", "update_measurements", "write_case"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'medscan.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
