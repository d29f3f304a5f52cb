"""One CT case, end to end: segment, measure, mesh, preview, written into a folder.

Used by the ``segment`` job (which adds hashing, the manifest and the atomic rename, see
:mod:`medscan.batch`) and by the napari widget. Reads no config files itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medscan.backend import Backend, get_backend
from medscan.ct.measure import MeasureOptions, measure_case
from medscan.ct.mesh import FORMATS, SPACE, MeshParams, export_mesh, label_surface, mesh_summary
from medscan.ct.segment import Segmentation, SegmentParams, segment
from medscan.ct.tissues import TissueTable
from medscan.io import LABELS, MESH_DIR, METRICS, PREVIEW, QC, VOLUME, atomic_write, write_json
from medscan.volume import Finding, Volume


@dataclass
class CaseOptions:
    """What to compute and write for a case.

    Attributes
    ----------
    tissues : TissueTable
        HU bands, ids, colours.
    segment : SegmentParams
        Segmentation parameters.
    mesh : MeshParams
        Smoothing / decimation.
    mesh_labels : list of str
        Tissue names to mesh (only these are meshed: meshing is the costly part).
    mesh_formats : list of str
        Subset of ``ply, stl, obj, glb``.
    min_slices : int
        Fewer slices than this: too short to mesh (status failed, other outputs written).
    preview : bool
        Write ``preview.png``.
    measure : MeasureOptions
        Density bands and the metric blocks (:func:`medscan.ct.measure.measure_case`).
    """

    tissues: TissueTable
    segment: SegmentParams = field(default_factory=SegmentParams)
    mesh: MeshParams = field(default_factory=MeshParams)
    mesh_labels: list[str] = field(default_factory=lambda: ["lung_left", "lung_right", "bone"])
    mesh_formats: list[str] = field(default_factory=lambda: ["ply", "glb"])
    min_slices: int = 3
    preview: bool = True
    measure: MeasureOptions = field(default_factory=MeasureOptions)

    def __post_init__(self) -> None:
        bad = [f for f in self.mesh_formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown mesh format(s) {bad}: use {list(FORMATS)}")
        if self.min_slices < 1:
            raise ValueError(f"min_slices={self.min_slices}: need at least 1")
        for name in self.mesh_labels:
            self.tissues[name]  # raises KeyError with the known names


@dataclass
class CaseResult:
    """Outcome of :func:`process_volume` (manifest fields plus the in-memory results)."""

    status: str
    reason: str
    metrics: dict[str, Any]
    meshes: list[dict[str, Any]]
    findings: list[Finding]
    timings_s: dict[str, float]
    segmentation: Segmentation | None = None
    surfaces: dict[str, Any] = field(default_factory=dict)


def process_volume(
    volume: Volume,
    folder: str | Path,
    options: CaseOptions,
    be: Backend | None = None,
    timings_s: dict[str, float] | None = None,
) -> CaseResult:
    """Segment, measure, mesh and preview ``volume``, writing the case files into ``folder``.

    Parameters
    ----------
    volume : Volume
        The loaded series.
    folder : str or Path
        Case folder (the job passes a temporary folder that it renames when complete).
    options : CaseOptions
        What to compute.
    be : Backend, optional
        Array backend (default CPU).
    timings_s : dict, optional
        Timings of earlier stages (``load``); this function adds its own.

    Returns
    -------
    CaseResult
        ``status`` is ``"failed"`` with a reason when no lungs were found or the series is too
        short to mesh; everything that could be computed is still written.
    """
    be = be or get_backend("cpu")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    timings = dict(timings_s or {})
    tissues = options.tissues

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - t0, 4)
        return now

    t = time.perf_counter()
    seg = segment(volume, tissues, options.segment, be=be)
    t = lap("segment", t)
    surfaces: dict[str, Any] = {}
    nz = volume.shape[0]
    if nz >= options.min_slices:  # meshed before measuring: surface areas come from the meshes
        for name in options.mesh_labels:
            surface = label_surface(seg.labels, tissues[name].label, volume.affine,
                                    options.mesh, be, thin=name in options.mesh.thin_labels)
            if surface is not None:
                surfaces[name] = surface
        t = lap("mesh", t)
    metrics, coverage_findings = measure_case(volume, seg.labels, tissues, options.measure,
                                              surfaces=surfaces, be=be)
    t = lap("measure", t)

    status, reason = "ok", ""
    findings = list(seg.findings) + coverage_findings
    if any(f.details.get("reason") == "field_of_view" for f in coverage_findings):
        for f in findings:
            if f.code == "one_lung":  # not "absent": the field of view cuts the body
                f.message = (f"{f.message.split(';')[0]}; the body is cut by the edge of the "
                             "image or field of view, so the other may be cut open there "
                             "(see lung_truncated)")
    if not seg.lungs_found:
        status, reason = "failed", seg.reason
    meshes: list[dict[str, Any]] = []
    if nz < options.min_slices:
        msg = f"series too short to mesh: {nz} slice(s), at least {options.min_slices} needed"
        findings.append(Finding("too_short_to_mesh", "error", msg))
        status, reason = "failed", f"{reason}; {msg}" if reason else msg
    else:
        (folder / MESH_DIR).mkdir(exist_ok=True)
        for name, surface in surfaces.items():
            info = mesh_summary(surface)
            for fmt in options.mesh_formats:
                rel = f"{MESH_DIR}/{name}.{fmt}"
                meta = {"tissue": name, "label": tissues[name].label, "case_id": volume.case_id}
                color = tissues[name].color
                atomic_write(
                    folder / rel,
                    lambda p, s=surface, c=color, m=meta: export_mesh(s, p, c, m),
                )
                meshes.append({"tissue": name, "label": tissues[name].label, "format": fmt,
                               "path": rel, **SPACE, **info})
        t = lap("mesh_write", t)

    volume.to_nifti(folder / VOLUME)
    volume.to_nifti(folder / LABELS, seg.labels)
    write_json(folder / METRICS, metrics)
    write_json(
        folder / QC,
        {
            "case_id": volume.case_id,
            "loader_findings": [f.to_dict() for f in volume.findings],
            "segmentation_findings": [f.to_dict() for f in findings],
        },
    )
    t = lap("write", t)
    if options.preview:
        title = f"{volume.case_id}  status={status}" + (f"  ({reason})" if reason else "")
        atomic_write(folder / PREVIEW, lambda p: render_preview_to(volume, seg, tissues,
                                                                   surfaces, p, title))
        t = lap("preview", t)
    return CaseResult(
        status=status, reason=reason, metrics=metrics, meshes=meshes, findings=findings,
        timings_s={**timings, **{f"segment.{k}": v for k, v in seg.timings_s.items()}},
        segmentation=seg, surfaces=surfaces,
    )


def render_preview_to(
    volume: Volume, seg: Segmentation, tissues: TissueTable, surfaces: dict[str, Any],
    path: Path, title: str,
) -> Path:
    """Render the preview PNG (imports matplotlib lazily)."""
    from medscan.ct.render import render_preview

    return render_preview(volume.hu, seg.labels, volume.affine, tissues, surfaces, path, title)
