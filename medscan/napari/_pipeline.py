"""What the CT segmentation widget runs: :func:`medscan.ct.analyse.analyse` on one volume.

Nothing here re-implements the CT pipeline: :func:`run_case` calls
:func:`medscan.ct.analyse.analyse` (segment, measure, mesh, preview; in memory) with the job's
defaults from ``conf/segment.yaml`` and the widget's tissue table; :func:`save_case` writes the
result with :func:`medscan.io.case.write_case`, the writer of every case folder (same files,
manifest and config hash as ``medscan segment``). So a case saved from napari is a case like any
other for the reader, ``medscan segment`` reruns and the batch index.
"""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from medscan.volume import Volume

#: Keys of ``conf/segment.yaml`` that describe one case's processing (not the batch run).
CASE_KEYS = ("segment", "mesh", "mesh_labels", "mesh_formats", "min_slices", "preview", "outputs")


def job_defaults() -> dict[str, Any]:
    """The per-case settings of ``conf/segment.yaml`` (segment, mesh, mesh labels/formats, ...)."""
    import yaml

    text = (files("medscan_conf") / "segment.yaml").read_text()
    cfg = yaml.safe_load(text)
    return {k: cfg[k] for k in CASE_KEYS if k in cfg}


def run_case(
    volume: Volume,
    tissues: Any,
    *,
    backend: str = "cpu",
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Segment, measure and mesh one volume in memory (the widget's worker thread).

    Parameters
    ----------
    volume : Volume
        HU volume with its LPS affine.
    tissues : medscan.ct.tissues.TissueTable
        Tissue table (the HU bands as set on the widget's sliders).
    backend : str
        ``"cpu"``, ``"gpu"`` or ``"auto"`` (:func:`medscan.backend.get_backend`).
    settings : dict, optional
        Per-case settings; default :func:`job_defaults`.

    Returns
    -------
    dict
        ``case`` (the :class:`~medscan.case.CaseResult`), ``options``, ``volume``,
        ``settings``, ``tissues``, ``backend``, ``status``, ``reason``, ``label_map`` (uint8
        ``(z, y, x)``), ``labels`` (manifest ``{id: {name, color}}``), ``metrics``, ``meshes``
        (``{tissue: (vertices LPS mm, faces)}``), ``timings_s``, ``seconds``.
    """
    from medscan.backend import get_backend
    from medscan.ct.analyse import CaseOptions, analyse

    t0 = time.perf_counter()
    settings = dict(settings or job_defaults())
    options = CaseOptions.from_config({**settings, "tissues": tissues.to_config()})
    be = get_backend(backend)
    result = analyse(volume, options, be)
    meshes = {
        name: (np.asarray(surface.vertices), np.asarray(surface.faces))
        for name, surface in result.surfaces.items()
    }
    return {
        "case": result,
        "options": options,
        "volume": volume,
        "settings": settings,
        "tissues": options.tissues,
        "backend": be.name,
        "status": result.status,
        "reason": result.reason,
        "label_map": result.labels.array if result.labels is not None else None,
        "labels": options.tissues.labels_dict(),
        "metrics": result.metrics,
        "meshes": meshes,
        "timings_s": result.timings_s,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def save_case(result: dict[str, Any], output: str | Path, *, uniform: bool = False) -> Path:
    """Write a :func:`run_case` result as ``output/<case_id>/`` with the one case writer.

    :func:`medscan.io.case.write_case` (atomic, replaces an older folder, rebuilds
    ``index.csv``), with the same config hash as ``medscan segment`` for the same options
    (:func:`medscan.ct.analyse.case_config`; ``uniform``: how the volume was loaded).

    Returns
    -------
    Path
        The case folder.
    """
    from medscan.case import Provenance
    from medscan.ct.analyse import case_config
    from medscan.io.case import write_case

    case = result["case"]
    options = result["options"]
    volume: Volume = result["volume"]
    config = case_config(options, uniform=uniform)
    provenance = Provenance.for_files(list(volume.files), config, backend=result["backend"],
                                      series=None)
    provenance.seconds = result["seconds"]
    return write_case(case, output, provenance, mesh_formats=options.mesh_formats,
                      outputs=options.outputs, report=options.report)
