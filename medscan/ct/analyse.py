"""One CT case as a value: :func:`analyse` segments, measures, meshes and previews a volume.

Pure: no file I/O, no config dicts. The ``segment`` job, the napari widget and Python users call
it and hand the :class:`~medscan.case.CaseResult` to :func:`medscan.io.case.write_case`::

    from medscan.ct.analyse import CaseOptions, analyse, case_config
    from medscan.case import Provenance
    from medscan.io import write_case

    options = CaseOptions.defaults()
    result = analyse(volume, options)
    write_case(result, "out", Provenance.for_volume(volume, case_config(options)),
               mesh_formats=options.mesh_formats, outputs=options.outputs)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from medscan.backend import Backend, get_backend
from medscan.case import CaseResult
from medscan.ct.measure import MeasureOptions, measure_case
from medscan.ct.mesh import MeshParams, label_surface
from medscan.ct.segment import SegmentParams, segment
from medscan.ct.tissues import TissueTable
from medscan.defaults import segment_defaults, tissue_defaults
from medscan.io.case import check_outputs
from medscan.io.mesh import FORMATS
from medscan.volume import Finding, LabelMap, Volume


@dataclass
class CaseOptions:
    """What to compute (and which files to write) for a case.

    Defaults are those of ``conf/segment.yaml`` (:mod:`medscan.defaults`); no value is
    repeated here. :meth:`defaults` gives the whole set with the default tissue table.

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
        Subset of ``ply, stl, obj, glb`` (used by ``write_case``).
    min_slices : int
        Fewer slices than this: too short to mesh (status failed, other outputs written).
    preview : bool
        Render the preview image.
    outputs : list of str
        Optional outputs (``medscan.io.case.OUTPUT_WRITERS``; used by ``write_case``).
    report : bool
        Write ``report.html`` into the case folder (used by ``write_case``).
    measure : MeasureOptions
        Density bands and the metric blocks (:func:`medscan.ct.measure.measure_case`).
    """

    tissues: TissueTable
    segment: SegmentParams = field(default_factory=SegmentParams)
    mesh: MeshParams = field(default_factory=MeshParams)
    mesh_labels: list[str] = field(default_factory=lambda: _default("mesh_labels"))
    mesh_formats: list[str] = field(default_factory=lambda: _default("mesh_formats"))
    min_slices: int = field(default_factory=lambda: _default("min_slices"))
    preview: bool = field(default_factory=lambda: _default("preview"))
    outputs: list[str] = field(default_factory=lambda: _default("outputs"))
    report: bool = field(default_factory=lambda: _default("report"))
    measure: MeasureOptions = field(default_factory=MeasureOptions)

    def __post_init__(self) -> None:
        bad = [f for f in self.mesh_formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown mesh format(s) {bad}: use {list(FORMATS)}")
        self.outputs = check_outputs(self.outputs)
        if self.min_slices < 1:
            raise ValueError(f"min_slices={self.min_slices}: need at least 1")
        for name in self.mesh_labels:
            self.tissues[name]  # raises KeyError with the known names

    @classmethod
    def defaults(cls, tissues: TissueTable | None = None) -> CaseOptions:
        """The options of ``conf/segment.yaml`` as shipped (what ``medscan segment`` uses).

        Parameters
        ----------
        tissues : TissueTable, optional
            Default: ``conf/tissues/default.yaml``.
        """
        return cls(tissues=tissues or TissueTable.from_config(tissue_defaults()))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> CaseOptions:
        """Build from the plain (resolved) ``conf/segment.yaml`` mapping (``tissues`` included).

        Raises
        ------
        KeyError, TypeError, ValueError
            For a missing ``tissues`` section, an unknown key or a bad value.
        """
        return cls(
            tissues=TissueTable.from_config(cfg["tissues"]),
            segment=SegmentParams.from_config(cfg.get("segment")),
            mesh=MeshParams.from_config(cfg.get("mesh")),
            mesh_labels=list(cfg.get("mesh_labels") or []),
            mesh_formats=list(cfg.get("mesh_formats") or []),
            min_slices=int(cfg.get("min_slices", _default("min_slices"))),
            preview=bool(cfg.get("preview", _default("preview"))),
            outputs=list(cfg.get("outputs", _default("outputs")) or []),
            report=bool(cfg.get("report", _default("report"))),
            measure=MeasureOptions.from_config(cfg),
        )


def _default(key: str) -> Any:
    """A case option's default: ``conf/segment.yaml`` (:mod:`medscan.defaults`)."""
    return segment_defaults(key)


def case_config(options: CaseOptions, uniform: bool = True,
                free_text: bool = False) -> dict[str, Any]:
    """The config that decides a case's outputs: what ``config_hash`` covers.

    The case options plus the load options that change the outputs (``uniform``: resample
    uneven stacks; ``free_text``: keep free-text DICOM fields in the manifest). The job and the
    napari widget both hash this, so a case either wrote is current for the other when the
    options are equal.

    Returns
    -------
    dict
        JSON-safe, keys ``tissues, segment, mesh, mesh_labels, mesh_formats, min_slices,
        preview, outputs, report, density, measure, uniform, free_text``.
    """
    measure = options.measure
    return {
        "tissues": options.tissues.to_config(),
        "segment": options.segment.to_dict(),
        "mesh": options.mesh.to_dict(),
        "mesh_labels": list(options.mesh_labels),
        "mesh_formats": list(options.mesh_formats),
        "min_slices": int(options.min_slices),
        "preview": bool(options.preview),
        "outputs": list(options.outputs),
        "report": bool(options.report),
        "density": measure.density.to_dict(),
        "measure": {"regions": bool(measure.regions), "structures": bool(measure.structures),
                    "min_contact_cm2": float(measure.min_contact_cm2)},
        "uniform": bool(uniform),
        "free_text": bool(free_text),
    }


def analyse(volume: Volume, options: CaseOptions, be: Backend | None = None) -> CaseResult:
    """Segment, measure, mesh and preview ``volume``; nothing is written.

    Parameters
    ----------
    volume : Volume
        The loaded series (HU, LPS affine).
    options : CaseOptions
        What to compute.
    be : Backend, optional
        Array backend (default CPU).

    Returns
    -------
    CaseResult
        ``status`` is ``"failed"`` with a reason when no lungs were found or the series is too
        short to mesh; everything that could be computed is still there. ``timings_s`` holds
        ``segment, measure, mesh, preview`` and the segmentation's own steps (``segment.*``).
    """
    be = be or get_backend("cpu")
    tissues = options.tissues
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - t0, 4)
        return now

    t = time.perf_counter()
    seg = segment(volume, tissues, options.segment, be=be)
    labels = LabelMap(seg.labels, volume.affine.copy(), tissues.label_table(), volume.case_id)
    t = lap("segment", t)
    surfaces: dict[str, Any] = {}
    nz = volume.shape[0]
    if nz >= options.min_slices:  # meshed before measuring: surface areas come from the meshes
        for name in options.mesh_labels:
            surface = label_surface(labels.array, tissues[name].label, volume.affine,
                                    options.mesh, be, thin=name in options.mesh.thin_labels)
            if surface is not None:
                surfaces[name] = surface
        t = lap("mesh", t)
    metrics, coverage_findings = measure_case(volume, labels, tissues, options.measure,
                                              surfaces=surfaces, be=be)
    t = lap("measure", t)

    result = CaseResult(case_id=volume.case_id, volume=volume, labels=labels, metrics=metrics,
                        surfaces=surfaces, findings=list(seg.findings) + coverage_findings)
    if any(f.details.get("reason") == "field_of_view" for f in coverage_findings):
        for f in result.findings:
            if f.code == "one_lung":  # not "absent": the field of view cuts the body
                f.message = (f"{f.message.split(';')[0]}; the body is cut by the edge of the "
                             "image or field of view, so the other may be cut open there "
                             "(see lung_truncated)")
    if not seg.lungs_found:
        result.fail(seg.reason)
    if nz < options.min_slices:
        msg = f"series too short to mesh: {nz} slice(s), at least {options.min_slices} needed"
        result.findings.append(Finding("too_short_to_mesh", "error", msg))
        result.fail(msg)
    if options.preview:
        from medscan.ct.render import preview_png

        title = f"{volume.case_id}  status={result.status}" + (
            f"  ({result.reason})" if result.reason else "")
        result.preview_png = preview_png(volume.hu, labels.array, volume.affine, tissues,
                                         result.surfaces, title)
        t = lap("preview", t)
    result.timings_s = {**timings, **{f"segment.{k}": v for k, v in seg.timings_s.items()}}
    return result
