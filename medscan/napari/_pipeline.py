"""What the CT segmentation widget runs: the segment job's stages on one in-memory volume.

The stages are the CT engineer's (``medscan.ct``, ``medscan.io``); this module only chains
them for one :class:`~medscan.volume.Volume` and hands plain results back to the widget, so the
widget and ``medscan segment`` produce the same label map, metrics, meshes and case folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medscan.volume import Volume


def run_case(volume: Volume, tissues: Any, *, backend: str = "cpu") -> dict[str, Any]:
    """Segment, measure and mesh one volume (runs in the widget's worker thread).

    Parameters
    ----------
    volume : Volume
        HU volume with its LPS affine.
    tissues : medscan.ct.tissues.TissueTable
        Tissue table (HU bands as set on the widget's sliders).
    backend : str
        ``"cpu"``, ``"gpu"`` or ``"auto"`` (:func:`medscan.backend.get_backend`).

    Returns
    -------
    dict
        ``volume``, ``label_map`` (uint8 ``(z, y, x)``), ``labels`` (manifest-style
        ``{id: {name, color}}``), ``metrics`` (``metrics.json`` content), ``meshes``
        (``{tissue: (vertices LPS mm, faces)}``), ``lungs_found``, ``reason``, ``findings``,
        ``tissues``.
    """
    from medscan.backend import get_backend
    from medscan.ct.segment import segment

    be = get_backend(backend)
    seg = segment(volume, tissues, be=be)
    return {
        "volume": volume,
        "tissues": tissues,
        "label_map": seg.labels,
        "labels": tissues.labels_dict(),
        "metrics": {},
        "meshes": {},
        "lungs_found": seg.lungs_found,
        "reason": seg.reason,
        "findings": seg.findings,
        "segmentation": seg,
    }


def save_case(result: dict[str, Any], output: Path) -> Path:
    """Write a :func:`run_case` result as ``output/<case_id>/`` in the segment job's layout."""
    raise NotImplementedError("waiting for medscan.io")
