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

import importlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medscan.backend import Backend, get_backend
from medscan.case import CaseResult
from medscan.ct.measure import MeasureOptions, measure_case
from medscan.ct.mesh import (
    LabelCrop,
    MeshParams,
    contained_surface,
    crop_surface,
    label_crop,
    label_surface,
    mesh_from_arrays,
    warm_up,
)
from medscan.ct.segment import SegmentParams, segment
from medscan.ct.tissues import TissueTable
from medscan.defaults import segment_defaults, tissue_defaults
from medscan.hpc import usable_cpus
from medscan.io.case import check_outputs
from medscan.io.mesh import FORMATS
from medscan.volume import Finding, LabelMap, Volume

log = logging.getLogger("medscan.analyse")


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
    parallel_meshes : bool
        Mesh the label with the largest box in a contained worker process while this process
        meshes the others and measures (CPU backend and at least 2 CPUs only; same outputs).
        A pure performance switch: not part of :func:`case_config`.
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
    parallel_meshes: bool = field(default_factory=lambda: _default("parallel_meshes"))

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
            parallel_meshes=bool(cfg.get("parallel_meshes", _default("parallel_meshes"))),
        )


def _default(key: str) -> Any:
    """A case option's default: ``conf/segment.yaml`` (:mod:`medscan.defaults`)."""
    return segment_defaults(key)


def case_config(options: CaseOptions, uniform: bool = True,
                free_text: bool = False) -> dict[str, Any]:
    """The config that decides a case's outputs: what ``config_hash`` covers.

    The case options plus the load options that change the outputs (``uniform``: resample
    uneven stacks; ``free_text``: keep free-text DICOM fields in the manifest). Not
    ``parallel_meshes``: it changes the speed, not the outputs. The job and the
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


def analyse(volume: Volume, options: CaseOptions, be: Backend | None = None,
            defer_preview: bool = False) -> CaseResult:
    """Segment, measure, mesh and preview ``volume``; nothing is written.

    Parameters
    ----------
    volume : Volume
        The loaded series (HU, LPS affine).
    options : CaseOptions
        What to compute.
    be : Backend, optional
        Array backend (default CPU).
    defer_preview : bool
        With parallel meshes, return while the preview is still drawn in the worker process
        (:class:`PendingPreview`): ``preview_png`` is then None and ``pending_preview`` set
        until :meth:`~medscan.case.CaseResult.wait_preview` (the case writer calls it). The
        jobs use this; the default returns the PNG.

    Returns
    -------
    CaseResult
        ``status`` is ``"failed"`` with a reason when no lungs were found or the series is too
        short to mesh; everything that could be computed is still there. ``timings_s`` holds
        ``segment, measure, mesh, preview`` and the segmentation's own steps (``segment.*``);
        with parallel meshes ``mesh.worker``, the worker's mesh from request to result, and
        ``preview.worker``, the preview's drawing from request to result.
    """
    be = be or get_backend("cpu")
    cancel = threading.Event()
    try:
        return _analyse(volume, options, be, cancel, defer_preview)
    except BaseException:  # Ctrl-C in a job or the widget: a mesh still in a worker is killed
        cancel.set()
        raise


def _analyse(volume: Volume, options: CaseOptions, be: Backend,
             cancel: threading.Event, defer_preview: bool = False) -> CaseResult:
    """:func:`analyse`'s work; ``cancel`` stops this case's worker requests when set."""
    tissues = options.tissues
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - t0, 4)
        return now

    nz = volume.shape[0]
    warm = None
    if nz >= options.min_slices and options.mesh_labels and parallel_meshes(options, be):
        warm = _in_background(warm_up, (1,), "u1", [Path("warm-up")],  # while segmenting
                              cancel=cancel)
    t = time.perf_counter()
    seg = segment(volume, tissues, options.segment, be=be)
    labels = LabelMap(seg.labels, volume.affine.copy(), tissues.label_table(), volume.case_id)
    t = lap("segment", t)
    surfaces: Mapping[str, Any] = {}
    meshes = None
    if nz >= options.min_slices:  # meshed before measuring: surface areas come from the meshes
        if warm is not None:
            meshes = _Meshes.start(labels.array, volume.affine, options, be, warm, cancel)
            surfaces = meshes
        else:
            surfaces = {}
            for name in options.mesh_labels:
                surface = label_surface(labels.array, tissues[name].label, volume.affine,
                                        options.mesh, be, thin=name in options.mesh.thin_labels)
                if surface is not None:
                    surfaces[name] = surface
        t = lap("mesh", t)
    metrics, coverage_findings = measure_case(volume, labels, tissues, options.measure,
                                              surfaces=surfaces, be=be)
    t = lap("measure", t)
    mesh_failures: list[str] = []
    if meshes is not None:  # joined while measuring (surface areas) or now
        surfaces = dict(meshes)
        mesh_failures = meshes.failures
        timings["measure"] = round(timings["measure"] - meshes.wait_s, 4)
        timings["mesh"] = round(timings["mesh"] + meshes.wait_s, 4)
        timings["mesh.worker"] = round(meshes.worker_s, 4)

    result = CaseResult(case_id=volume.case_id, volume=volume, labels=labels, metrics=metrics,
                        surfaces=dict(surfaces),
                        findings=list(seg.findings) + coverage_findings)
    for msg in mesh_failures:
        result.findings.append(Finding("mesh_failed", "error", msg))
        result.fail(msg)
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
        from medscan.ct.render import preview_scene

        title = f"{volume.case_id}  status={result.status}" + (
            f"  ({result.reason})" if result.reason else "")
        scene = preview_scene(volume.hu, labels.array, volume.affine, tissues, result.surfaces)
        if warm is None:  # no worker: drawn here, as part of "preview"
            from medscan.ct.render import scene_png

            result.preview_png = scene_png(scene, title)
        else:
            pending = PendingPreview.start(scene, title, volume.case_id, cancel)
            if defer_preview:
                result.pending_preview = pending
            else:
                result.preview_png = pending.result(result.timings_s)
        t = lap("preview", t)
    result.timings_s = {**timings, **{f"segment.{k}": v for k, v in seg.timings_s.items()},
                        **result.timings_s}
    return result


class PendingPreview:
    """The case's preview PNG, drawn in a worker process while the job writes the rest.

    :func:`~medscan.ct.render.preview_scene` (slices, subsample, decimated meshes: 0.1-0.2 s)
    runs in the job's process; the drawing (:func:`~medscan.ct.render.scene_png`, 0.4-0.9 s
    and the first figure's matplotlib imports and fonts, 0.4-0.5 s more) runs in a contained
    worker (:func:`medscan.dicom.contain.run_contained`, the warm one that meshed the bone)
    while the job writes the NIfTI files and meshes (``defer_preview``). The worker draws the
    same figure from the same scene: the PNG is byte-identical to the in-process one
    (``tests/test_mesh_parallel.py``). When the worker fails (crash, or no PNG within
    :data:`PREVIEW_TIMEOUT_S`), a warning names the case and the reason and the preview is
    drawn in this process instead: a preview is never lost to the worker.
    """

    def __init__(self, scene: Any, title: str, case_id: str, future: Future[Any],
                 cancel: threading.Event) -> None:
        self._scene, self._title, self._case_id = scene, title, case_id
        self._future, self._cancel = future, cancel
        self._started = time.perf_counter()

    @classmethod
    def start(cls, scene: Any, title: str, case_id: str,
              cancel: threading.Event) -> PendingPreview:
        """Send the drawing to a contained worker process; ``cancel`` set kills it."""
        from medscan.ct.render import render_contained

        future = _in_background(render_contained, (1,), "u1", [Path("preview")], scene, title,
                                timeout_s=PREVIEW_TIMEOUT_S, cancel=cancel)
        return cls(scene, title, case_id, future, cancel)

    def result(self, timings: dict[str, float] | None = None) -> bytes:
        """The PNG bytes: the worker's, or drawn here when the worker failed.

        ``timings``, when given, gets ``preview.worker``: seconds from the request to the
        worker's PNG (the drawing overlapped with what the job did meanwhile); not set when
        the worker failed (the drawing here is then part of the caller's own time).

        Raises
        ------
        KeyboardInterrupt
            Or any exception while waiting: the worker is killed first (:meth:`discard`).
        """
        from medscan.ct.render import scene_png
        from medscan.dicom.contain import ContainedError

        try:
            _, png = self._future.result()
        except ContainedError as exc:  # the worker crashed or hung: draw it here
            log.warning("case %s: the preview's worker process failed (%s); drawing it in the "
                        "job's process", self._case_id, _worker_failure(exc))
            return scene_png(self._scene, self._title)
        except BaseException:
            self.discard()
            raise
        if timings is not None:
            timings["preview.worker"] = round(time.perf_counter() - self._started, 4)
        return png

    def discard(self) -> None:
        """The preview is not wanted (the case's writing failed): a drawing worker is killed."""
        self._cancel.set()


#: Modules :func:`analyse` imports in the job's process on its first case (SciPy's ndimage,
#: cc3d, scikit-image's marching cubes -- ``module:attribute``, scikit-image loads it on
#: first use --, trimesh, fast-simplification, nibabel for the writer):
#: 0.6-0.9 s of imports on this machine, which :func:`preload_modules` moves into the wait
#: for the decoder processes.
CASE_MODULES = ("scipy.ndimage", "cc3d", "skimage.measure:marching_cubes", "trimesh",
                "fast_simplification", "nibabel")
_preload_started = threading.Event()


def preload_modules() -> threading.Thread | None:
    """Import :data:`CASE_MODULES` in a background thread (once per process).

    For a job whose process is about to wait for its decoder processes
    (:mod:`medscan.dicom.contain`): the imports then run while it waits (their CPU is shared
    with the decoders) instead of at the start of the first case's segmentation and meshing.
    Python's import lock makes a later ``import`` of the same module wait for this one; a
    module that fails to import here raises again, with its message, where it is used.
    Returns the thread (daemon), or None when already started.
    """
    if _preload_started.is_set():
        return None
    _preload_started.set()

    def run() -> None:
        for entry in CASE_MODULES:
            name, _, attr = entry.partition(":")  # skimage's submodules load on attribute use
            try:
                module = importlib.import_module(name)
                if attr:
                    getattr(module, attr)
            except Exception:  # raised again where the module is used
                continue

    thread = threading.Thread(target=run, name="medscan-preload", daemon=True)
    thread.start()
    return thread


#: Seconds the preview's drawing in a worker process may take before the worker is killed and
#: the preview is drawn in the job's process instead (with a warning): the drawing takes
#: 0.4-0.9 s, 1.5-2 s in a freshly started worker on a loaded machine. Short enough that a hung
#: worker costs a batch little and stays well inside Slurm's grace period.
PREVIEW_TIMEOUT_S = 30.0
#: Seconds a mesh in the worker process may take before the worker is killed: a base plus a
#: per-slice allowance (RICORD's bone, 255 slices: about 3 s; a hang is a bug in native code).
MESH_TIMEOUT_BASE_S = 120.0
MESH_TIMEOUT_PER_SLICE_S = 0.5


def _worker_failure(exc: BaseException) -> str:
    """What happened to a contained worker, without contain.py's word "decoder" in front."""
    return str(exc).removeprefix("decoder ")


def _in_background(func: Any, *args: Any, **kwargs: Any) -> Future[Any]:
    """``run_contained(func, *args, **kwargs)`` in a thread of its own (ends with the task)."""
    from medscan.dicom.contain import run_contained

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medscan-mesh")
    try:
        return pool.submit(run_contained, func, *args, **kwargs)
    finally:
        pool.shutdown(wait=False)


def parallel_meshes(options: CaseOptions, be: Backend) -> bool:
    """Whether :func:`analyse` meshes one label in a worker process (see ``parallel_meshes``).

    Only with ``options.parallel_meshes``, the CPU backend (the GPU's arrays stay in this
    process) and at least two usable CPUs (with one the two processes would only take turns).
    """
    return bool(options.parallel_meshes) and be.name == "cpu" and usable_cpus() >= 2


class _Meshes(Mapping[str, Any]):
    """The case's meshes while the costliest one is still being computed in a worker process.

    :meth:`start` computes each label's crop (:func:`~medscan.ct.mesh.label_crop`), sends the
    one with the largest box (on chest CT: bone, about 2/3 of the meshing) to a contained
    worker process (:func:`medscan.dicom.contain.run_contained`, from a background thread; the
    GIL is free while the thread waits on the pipe) and meshes the others here. Reading the
    mapping (``measure_case`` reads the surface areas last) waits for the worker. The worker
    returns the mesh's arrays; :func:`~medscan.ct.mesh.mesh_from_arrays` rebuilds the same
    mesh (no reprocessing), so meshes, files, metrics and preview equal the serial path's.

    Why a worker process and not a thread: the quadric decimation (fast-simplification) holds
    the GIL. Why contain.py's worker: it is started without fork (see that module), and a
    crash of native mesh code then fails this case (:attr:`failures`), not the batch.
    """

    def __init__(self, names: list[str]) -> None:
        self._names = names
        self._done: dict[str, Any] = {}
        self._pending: tuple[str, Future[Any]] | None = None
        self.failures: list[str] = []
        self.wait_s = 0.0
        self.worker_s = 0.0

    @classmethod
    def start(cls, labels: Any, affine: Any, options: CaseOptions, be: Backend,
              warm: Future[Any] | None = None,
              cancel: threading.Event | None = None) -> _Meshes:
        """Start the worker's mesh and compute the others (returns when they are done).

        ``warm``: the :func:`~medscan.ct.mesh.warm_up` request sent while segmenting; it is
        waited for first, so its worker (back in the pool, taken last-in first-out) gets the
        mesh. Its failure is not this case's: the mesh request then starts a new worker.
        ``cancel``: set, it kills the worker (:func:`~medscan.dicom.contain.run_contained`).
        """
        if warm is not None:
            wait([warm])
        tissues = options.tissues
        params = options.mesh
        crops: dict[str, LabelCrop] = {}
        for name in options.mesh_labels:
            crop = label_crop(labels, tissues[name].label, affine, params, be)
            if crop is not None:
                crops[name] = crop
        self = cls([n for n in options.mesh_labels if n in crops])
        if not crops:
            return self
        far = max(crops, key=lambda n: crops[n].voxels)  # first of equal boxes
        self._submit(far, crops.pop(far), affine, params, labels.shape[0], cancel)
        for name, crop in crops.items():
            surface = crop_surface(crop, affine, params, be, thin=name in params.thin_labels)
            if surface is not None:
                self._done[name] = surface
        return self

    def _submit(self, name: str, crop: LabelCrop, affine: Any, params: MeshParams,
                nz: int, cancel: threading.Event | None) -> None:
        timeout = MESH_TIMEOUT_BASE_S + MESH_TIMEOUT_PER_SLICE_S * nz
        future = _in_background(contained_surface, (1,), "u1", [Path(name)], crop, affine,
                                params, name in params.thin_labels, timeout_s=timeout,
                                cancel=cancel)
        started = time.perf_counter()
        future.add_done_callback(
            lambda _: setattr(self, "worker_s", time.perf_counter() - started))
        self._pending = (name, future)

    def _join(self) -> None:
        """Wait for the worker's mesh; a crash or timeout becomes a failure of the case."""
        if self._pending is None:
            return
        from medscan.dicom.contain import ContainedError

        name, future = self._pending
        self._pending = None
        t0 = time.perf_counter()
        try:
            _, arrays = future.result()
        except ContainedError as exc:  # native code crashed or hung: this case fails
            self.failures.append(f"mesh of {name} failed in its worker process: "
                                 f"{_worker_failure(exc)}")
            arrays = None
        finally:
            self.wait_s = time.perf_counter() - t0
        if arrays is not None:
            self._done[name] = mesh_from_arrays(*arrays)

    def __getitem__(self, name: str) -> Any:
        self._join()
        return self._done[name]

    def __iter__(self) -> Iterator[str]:
        self._join()
        return iter([n for n in self._names if n in self._done])  # mesh_labels' order

    def __len__(self) -> int:
        self._join()
        return len(self._done)
