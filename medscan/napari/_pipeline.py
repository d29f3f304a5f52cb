"""What the CT segmentation widget runs: the segment job's own stages on one in-memory volume.

Nothing here re-implements the CT pipeline: :func:`run_case` calls
:func:`medscan.ct.pipeline.process_volume` (segment, measure, mesh, preview, files) with the job's
defaults from ``conf/segment.yaml`` and the widget's tissue table, into a staging folder;
:func:`save_case` moves those files into ``output/<case_id>/`` with
:func:`medscan.batch.atomic_case_dir`, writes the same ``manifest.json`` fields as the job and
rebuilds ``index.csv`` with :func:`medscan.batch.rebuild_index`. So a case saved from napari
is a case like any other for the reader, ``medscan segment`` reruns and the batch index.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from medscan.volume import Volume

#: Keys of ``conf/segment.yaml`` that describe one case's processing (not the batch run).
CASE_KEYS = ("segment", "mesh", "mesh_labels", "mesh_formats", "min_slices", "preview")


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
    """Segment, measure and mesh one volume into a staging folder (the widget's worker thread).

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
        ``volume``, ``staging`` (folder holding the case files), ``settings``, ``tissues``,
        ``backend``, ``status``, ``reason``, ``label_map`` (uint8 ``(z, y, x)``), ``labels``
        (manifest ``{id: {name, color}}``), ``metrics`` (``metrics.json``), ``meshes``
        (``{tissue: (vertices LPS mm, faces)}``), ``mesh_entries`` (the manifest's ``meshes``),
        ``timings_s``, ``seconds``.
    """
    from medscan.backend import get_backend
    from medscan.ct.job import options_from_config

    t0 = time.perf_counter()
    settings = dict(settings or job_defaults())
    options = options_from_config({**settings, "tissues": _tissue_config(tissues)})
    be = get_backend(backend)
    staging = Path(tempfile.mkdtemp(prefix=f"medscan-napari-{volume.case_id}-"))
    atexit.register(shutil.rmtree, staging, True)  # staged files never outlive the session
    from medscan.ct.pipeline import process_volume

    result = process_volume(volume, staging, options, be)
    meshes = {
        name: (np.asarray(surface.vertices), np.asarray(surface.faces))
        for name, surface in result.surfaces.items()
    }
    return {
        "volume": volume,
        "staging": staging,
        "settings": settings,
        "tissues": options.tissues,
        "backend": be.name,
        "status": result.status,
        "reason": result.reason,
        "label_map": result.segmentation.labels if result.segmentation is not None else None,
        "labels": options.tissues.labels_dict(),
        "metrics": result.metrics,
        "meshes": meshes,
        "mesh_entries": result.meshes,
        "timings_s": result.timings_s,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _tissue_config(tissues: Any) -> dict[str, Any]:
    """A :class:`~medscan.ct.tissues.TissueTable` back as the ``tissues`` config mapping."""

    def spec(t: Any, band: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"label": t.label, "color": list(t.color), "source": t.source}
        if band:
            out["hu"] = [t.hu_min, t.hu_max]
        return out

    return {
        "name": tissues.name,
        "bands": {t.name: spec(t, True) for t in tissues.bands},
        "other": {tissues.other.name: spec(tissues.other, False)},
        "structures": {t.name: spec(t, False) for t in tissues.structures},
    }


def save_case(result: dict[str, Any], output: str | Path) -> Path:
    """Write a :func:`run_case` result as ``output/<case_id>/`` in the segment job's layout.

    The folder appears atomically (:func:`medscan.batch.atomic_case_dir`), replacing an older
    one; ``index.csv`` is rebuilt under its lock.

    Returns
    -------
    Path
        The case folder.
    """
    from medscan.batch import atomic_case_dir, config_hash, hash_series, rebuild_index
    from medscan.ct.job import versions
    from medscan.ct.mesh import SPACE
    from medscan.dicom.identity import secret_fingerprint
    from medscan.io import MANIFEST, QC, read_json, write_json
    from medscan.io.redact import FileRefs
    from medscan.volume import Finding

    volume: Volume = result["volume"]
    staging = Path(result["staging"])
    if not staging.is_dir():
        raise FileNotFoundError(f"{staging}: staging folder of this result is gone; run again")
    output = Path(output)
    config = {
        **result["settings"],
        "tissues": _tissue_config(result["tissues"]),
        "backend": {"name": result["backend"]},
        "source": "napari CT segmentation widget",
    }
    # The output folder names inputs by slice position and content hash, never by path
    # (archive folder names can carry identity; see medscan.io.redact).
    sources = [Path(f) for f in volume.files if Path(f).is_file()]
    inputs, input_hash = hash_series(sources) if sources else ([], "")
    refs = FileRefs(sources, hashes={str(f): i["sha256"] for f, i in zip(sources, inputs,
                                                                          strict=True)})
    manifest = {
        "case_id": volume.case_id,
        "status": result["status"],
        "reason": refs.text(result["reason"]),
        "config": config,
        "config_hash": config_hash(config),
        "inputs": inputs,
        "input_hash": input_hash,
        "id_secret_fingerprint": secret_fingerprint(),
        "versions": versions(),
        "backend": result["backend"],
        **SPACE,
        "labels": result["labels"],
        "meshes": result["mesh_entries"],
        "timings_s": result["timings_s"],
        "seconds": result["seconds"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_case_dir(output, volume.case_id) as tmp:
        shutil.copytree(staging, tmp, dirs_exist_ok=True)
        if (tmp / QC).is_file():
            qc = read_json(tmp / QC)
            for key in ("loader_findings", "segmentation_findings"):
                qc[key] = [refs.finding(Finding(**f)).to_dict() for f in qc.get(key, [])]
            write_json(tmp / QC, qc)
        write_json(tmp / MANIFEST, manifest)
    rebuild_index(output)
    return output / volume.case_id

