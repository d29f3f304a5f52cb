"""The case folder: :func:`write_case` (the ONE manifest builder) and :func:`read_case`.

Every case folder -- a ``medscan segment`` case (ok, failed, or a series whose files were all
refused), a case saved from the napari widget, a Python user's -- is written by
:func:`write_case`: atomically (:func:`medscan.io.casedir.case_writer`: built in a temporary
folder, renamed when complete; a failure never replaces an ``ok`` case of the same inputs),
with the manifest written last. :func:`read_case` is the one reader of that contract, and
:func:`rebuild_index` the one writer of ``index.csv`` (from :func:`read_manifest`).

File names: :mod:`medscan.io.layout`. Optional outputs beyond the core files are writers
registered in :data:`OUTPUT_WRITERS` (``outputs=[...]`` in ``conf/segment.yaml``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medscan.case import CaseResult, Provenance, utc_now
from medscan.hashing import sha256_file
from medscan.io.atomic import read_json, write_bytes, write_json, write_text
from medscan.io.casedir import LEASE_S, CaseWrite, case_writer, output_error
from medscan.io.gallery import write_gallery
from medscan.io.layout import (
    INDEX,
    INDEX_COLUMNS,
    LABELS,
    MANIFEST,
    METRICS,
    PREVIEW,
    QC,
    REPORT,
    SEG,
    VOLUME,
    format_index_cell,
    mesh_path,
    read_manifest,
)
from medscan.io.mesh import FORMATS, SPACE, export_mesh, mesh_summary
from medscan.io.nifti import SHEAR_TOLERANCE_DEG, shear_deg
from medscan.io.redact import FileRefs, relative_paths, safe_text
from medscan.io.report import write_batch_report, write_case_report
from medscan.volume import Finding, LabelMap, Volume

#: ``index.csv``'s lock file (held while the index is rebuilt).
LOCK_NAME = ".index.lock"

#: A writer of an optional output: ``writer(result, folder, provenance)`` writes its files into
#: the (temporary) case folder and returns their paths relative to it.
OutputWriter = Callable[[CaseResult, Path, Provenance], list[str]]


def _write_nifti(result: CaseResult, folder: Path, provenance: Provenance) -> list[str]:
    """``volume.nii.gz`` and ``labels.nii.gz`` (those that exist in ``result``)."""
    written = []
    if result.volume is not None:
        result.volume.to_nifti(folder / VOLUME)
        written.append(VOLUME)
    if result.labels is not None:
        result.labels.to_nifti(folder / LABELS)
        written.append(LABELS)
    return written


def _write_dicom_seg(result: CaseResult, folder: Path, provenance: Provenance) -> list[str]:
    """``seg.dcm``: the label map as a DICOM SEG on the source slices (:mod:`.dicom_seg`).

    Raises
    ------
    ValueError
        When the case has labels but no source DICOM files (a NIfTI input), or the label map
        cannot be placed on the source slices (:class:`~medscan.io.dicom_seg.SegGeometryError`
        says why); the job then records the case as failed with that reason.
    """
    if result.labels is None:
        return []
    from medscan.io.dicom_seg import write_seg

    files = list(result.volume.files) if result.volume is not None else []
    if not files:
        raise ValueError("outputs=[dicom_seg] needs the source DICOM series; this case has no "
                         "DICOM files (a NIfTI input?)")
    write_seg(result.labels, files, folder / SEG)
    return [SEG]


#: Optional outputs by name (``write_case(..., outputs=[...])``). Extension point: a module
#: adds its writer here.
OUTPUT_WRITERS: dict[str, OutputWriter] = {"nifti": _write_nifti, "dicom_seg": _write_dicom_seg}
#: Outputs whose failure fails the whole write (the case's own data: ``read_case``,
#: ``medscan measure`` and napari need them). Any other writer that raises is recorded as an
#: ``output_failed`` finding on a failed case, and every other output is still written.
REQUIRED_OUTPUTS = frozenset({"nifti"})


def check_outputs(outputs: Iterable[str]) -> list[str]:
    """``outputs`` as a list, every name a key of :data:`OUTPUT_WRITERS`.

    Raises
    ------
    ValueError
        Naming the unknown output(s) and the known ones (jobs check this before any work).
    """
    outputs = list(outputs)
    unknown = [o for o in outputs if o not in OUTPUT_WRITERS]
    if unknown:
        raise ValueError(f"unknown output(s) {unknown}: use {sorted(OUTPUT_WRITERS)}")
    return outputs


def _write_outputs(result: CaseResult, folder: Path, provenance: Provenance,
                   outputs: list[str], output: Path) -> CaseResult:
    """Run the output writers; ``result``, or a failed copy of it when an optional one failed.

    An optional writer (not in :data:`REQUIRED_OUTPUTS`) that raises loses only its own files:
    whatever it left in ``folder`` is removed, and the returned copy of ``result`` is
    ``failed`` (the output was asked for and not made: the job must not exit 0) with an
    ``output_failed`` error finding naming the output and the reason. Errors of the output
    folder itself (:func:`~medscan.io.casedir.output_error`) and failures of a required
    output propagate.
    """
    failures: list[Finding] = []
    notes: list[Finding] = []
    for name in outputs:
        before = {p for p in folder.rglob("*")}
        try:
            OUTPUT_WRITERS[name](result, folder, provenance)
        except Exception as exc:
            if name in REQUIRED_OUTPUTS or output_error(exc, output, folder) is not None:
                raise
            for path in sorted(set(folder.rglob("*")) - before, reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() else path.unlink()
            failures.append(Finding(
                "output_failed", "error",
                f"outputs=[{name}] not written: {type(exc).__name__}: {exc}",
                details={"output": name, "error": type(exc).__name__}))
            continue
        if name == "nifti" and (note := _sheared_nifti(result)) is not None:
            notes.append(note)
    if not failures:
        return dataclasses.replace(result, findings=[*result.findings, *notes]) if notes \
            else result
    said = "; ".join(f.message for f in failures)
    reason = f"{result.reason}; {said}" if result.status != "ok" and result.reason else said
    return dataclasses.replace(result, status="failed", reason=reason,
                               findings=[*result.findings, *notes, *failures])


def _sheared_nifti(result: CaseResult) -> Finding | None:
    """A ``sheared_affine`` warning when the NIfTI files' grid is sheared (gantry tilt).

    Their headers then carry no qform (:func:`medscan.io.nifti.nifti_bytes_header`): nibabel,
    FSL and medscan read the exact geometry, ITK-based tools refuse the files.
    """
    image = result.volume if result.volume is not None else result.labels
    if image is None:
        return None
    angle = shear_deg(image.affine)
    if angle <= SHEAR_TOLERANCE_DEG:
        return None
    names = [n for n, a in ((VOLUME, result.volume), (LABELS, result.labels)) if a is not None]
    return Finding(
        "sheared_affine", "warning",
        f"{' and '.join(names)} have a sheared affine: the slices are stacked {angle:.2f} "
        "degrees off their normal (gantry tilt), and every voxel keeps its true position. "
        "nibabel, FSL and medscan read it exactly (sform). ITK-based tools (SimpleITK, "
        "ITK-SNAP, 3D Slicer) cannot represent a shear: they refuse these files (no qform is "
        "written) rather than read them as an unsheared grid, which would make volumes "
        f"{100 / np.cos(np.radians(angle)) - 100:.1f}% too large and move structures. For "
        "them, load the source DICOM series (Slicer corrects the tilt) with seg.dcm "
        "(outputs=[nifti,dicom_seg]), or resample the NIfTI onto an orthogonal grid first.",
        details={"shear_deg": round(angle, 3), "files": names})


def write_case(
    result: CaseResult,
    output: str | Path,
    provenance: Provenance,
    *,
    mesh_formats: Iterable[str] = ("ply", "glb"),
    outputs: Iterable[str] = ("nifti",),
    label_table: dict[str, Any] | None = None,
    lease_s: float = LEASE_S,
    scratch: str | Path | None = None,
    index: bool = True,
    report: bool = True,
) -> Path:
    """Write ``result`` as ``output/<case_id>/``, atomically, the manifest last.

    See :func:`write_case_folder` (this returns only the case folder's path).
    """
    write = write_case_folder(result, output, provenance, mesh_formats=mesh_formats,
                              outputs=outputs, label_table=label_table, lease_s=lease_s,
                              scratch=scratch, index=index, report=report)
    return Path(output) / result.case_id if write.committed or write.kept else write.path


def write_case_folder(
    result: CaseResult,
    output: str | Path,
    provenance: Provenance,
    *,
    mesh_formats: Iterable[str] = ("ply", "glb"),
    outputs: Iterable[str] = ("nifti",),
    label_table: dict[str, Any] | None = None,
    lease_s: float = LEASE_S,
    scratch: str | Path | None = None,
    index: bool = True,
    report: bool = True,
) -> CaseWrite:
    """Write ``result`` as ``output/<case_id>/`` and report how the commit went.

    Files: the optional ``outputs`` (default ``nifti``: ``volume.nii.gz``, ``labels.nii.gz``;
    ``dicom_seg``: ``seg.dcm``), ``meshes/<tissue>.<fmt>`` for each surface and format,
    ``metrics.json`` (when there are metrics), ``qc.json`` (always), ``preview.png`` (when
    rendered), ``report.html`` (``report``), then ``manifest.json``.
    An optional output that cannot be made (a DICOM SEG refused for its geometry) fails the
    case with an ``output_failed`` finding; every other file is still written (a failed case
    keeps every output that could be made). Only :data:`REQUIRED_OUTPUTS` and errors of the
    output folder itself abort the write.
    Findings and the reason name input files as ``slice <i> sha256:<hex>`` and other paths as
    ``<path>``; path values of the stored config are made relative to the input root.

    Parameters
    ----------
    result : CaseResult
        What was computed (:func:`medscan.ct.analyse.analyse`), or a failed case.
    output : str or Path
        Batch output folder.
    provenance : Provenance
        Config, hashes, versions (:meth:`Provenance.for_files`).
    mesh_formats : iterable of str
        Subset of ``ply, stl, obj, glb``.
    outputs : iterable of str
        Names in :data:`OUTPUT_WRITERS`.
    label_table : dict, optional
        The manifest's ``labels`` when ``result.labels`` is None (a failed case).
    lease_s : float
        Lease of the temporary folder (:func:`medscan.io.casedir.case_writer`).
    scratch : str or Path, optional
        Node-local folder to build the case in.
    index : bool
        Rebuild ``output/index.csv`` afterwards (the job rebuilds it once at the end instead).
    report : bool
        Write ``report.html`` (:func:`medscan.io.report.write_case_report`, from the files
        written, before the manifest).

    Returns
    -------
    CaseWrite
        ``committed`` (the folder is in place), ``kept`` (a failed result did not replace an
        ``ok`` case of the same inputs), and ``manifest`` (as written).

    Raises
    ------
    ValueError
        For an unknown output or mesh format (before anything is written).
    OSError
        When the output folder cannot be written (nothing half-written stays behind).
    Exception
        Whatever a required output's writer raised (nothing half-written stays behind).
    """
    outputs, mesh_formats = check_outputs(outputs), list(mesh_formats)
    bad = [f for f in mesh_formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown mesh format(s) {bad}: use {list(FORMATS)}")
    output = Path(output)
    refs = FileRefs(provenance.source_files, provenance.source_root,
                    hashes={f: i["sha256"] for f, i in zip(provenance.source_files,
                                                           provenance.inputs, strict=False)})
    t0 = time.perf_counter()
    try:
        with case_writer(output, result.case_id, lease_s, scratch=scratch) as write:
            folder = write.path
            result = _write_outputs(result, folder, provenance, outputs, output)
            meshes = _write_meshes(result, folder, mesh_formats)
            if result.metrics:
                write_json(folder / METRICS, result.metrics)
            write_json(folder / QC, _qc(result, refs.findings))
            result.wait_preview()  # drawn in a worker meanwhile (analyse(defer_preview=True))
            if result.preview_png is not None:
                write_bytes(folder / PREVIEW, result.preview_png)
            timings = {**result.timings_s, "write": round(time.perf_counter() - t0, 4)}
            manifest = build_manifest(result, provenance, refs, meshes, timings, label_table,
                                      labels_sha256=_labels_sha256(folder))
            if report:
                write_case_report(folder, manifest)
            _write_manifest(folder, manifest)
            write.manifest = manifest
    finally:
        result.discard_preview()  # still pending only when the writing failed: not wanted
    if index:
        rebuild_index(output)
    return write


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (atomically; always the last file of a case written)."""
    write_json(folder / MANIFEST, manifest)


def _qc(result: CaseResult, redact: Callable[[list[Finding]], list[Finding]]) -> dict[str, Any]:
    """``qc.json`` of ``result``: its loader and segmentation findings, through ``redact``."""
    return {
        "case_id": result.case_id,
        "loader_findings": [f.to_dict() for f in redact(result.all_loader_findings())],
        "segmentation_findings": [f.to_dict() for f in redact(result.findings)],
    }


def update_measurements(case_dir: str | Path, result: CaseResult,
                        measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite a finished case's ``qc.json``, ``metrics.json`` and manifest from ``result``.

    The one way to change a case folder after :func:`write_case` (``medscan measure``): the
    data files (volume, labels, meshes, preview, DICOM SEG) are kept; ``qc.json``,
    ``metrics.json``, ``report.html`` (when present) and ``manifest.json`` then tell the
    re-measure's truth. The manifest is rebuilt by :func:`build_manifest` (the one builder)
    from the provenance read back with the case (:func:`read_case`): ``inputs``,
    ``input_hash``, ``config_hash``, ``created`` and ``seconds`` stay; ``status`` and ``reason``
    become ``result``'s, ``labels_sha256`` the hash of the ``labels.nii.gz`` measured now, and
    ``measured`` records the re-measurement: a ``medscan segment`` rerun keeps such a case
    (ok or failed) unless ``overwrite=true`` (:func:`labels_state`). Written in the order
    ``qc.json``, ``metrics.json``, ``report.html``, ``manifest.json`` (last), each atomically.
    The caller holds the case's lock (:func:`medscan.io.casedir.case_lock`).

    Parameters
    ----------
    case_dir : str or Path
        A case folder (:func:`is_case_dir`).
    result : CaseResult
        The case as read back by :func:`read_case`, with the re-measure's ``status``,
        ``reason``, ``metrics`` and ``findings`` (already free of paths: they came from the
        written case).
    measured : dict, optional
        The manifest's ``measured`` record (``{"created", "by", "config_hash", ...}``);
        default: the one ``result``'s provenance holds.

    Returns
    -------
    dict
        The manifest as written.

    Raises
    ------
    FileNotFoundError
        When ``case_dir`` is not a finished case folder (nothing is written).
    """
    folder = Path(case_dir)
    if not is_case_dir(folder):
        raise FileNotFoundError(f"{folder.name}: not a case folder (no {MANIFEST})")
    old = result.manifest or read_manifest(folder)
    provenance = result.provenance or Provenance.from_manifest(old)
    if measured is not None:
        provenance = dataclasses.replace(provenance, measured=dict(measured))
    # the manifest records the labels measured now: read_case's labels_edited no longer holds
    result.findings = [f for f in result.findings if f.code != "labels_edited"]
    manifest = build_manifest(result, provenance, FileRefs([]), list(old.get("meshes") or []),
                              dict(old.get("timings_s") or {}), old.get("labels"),
                              labels_sha256=_labels_sha256(folder))
    write_json(folder / QC, _qc(result, list))
    write_json(folder / METRICS, result.metrics)
    if (folder / REPORT).is_file():  # the report shows status, metrics, findings: refresh it
        write_case_report(folder, manifest)
    _write_manifest(folder, manifest)
    result.manifest, result.provenance = manifest, provenance
    return manifest


def build_manifest(
    result: CaseResult,
    provenance: Provenance,
    refs: FileRefs,
    meshes: list[dict[str, Any]],
    timings_s: dict[str, float],
    label_table: dict[str, Any] | None = None,
    *,
    labels_sha256: str | None = None,
) -> dict[str, Any]:
    """The content of ``manifest.json`` (the only place it is assembled).

    ``seconds`` is the provenance's, else the time since ``provenance.clock_start``, else the
    sum of the top-level stage timings. ``labels_sha256`` (when the case has a
    ``labels.nii.gz``) is the SHA-256 of that file as the metrics describe it, so that an edit
    made afterwards (napari) is noticed (:func:`labels_state`).
    """
    if result.labels is not None:
        labels = result.labels.labels_dict()
    else:
        labels = dict(label_table or {})
    seconds = provenance.seconds
    if seconds is None:
        seconds = (time.perf_counter() - provenance.clock_start
                   if provenance.clock_start is not None
                   else sum(v for k, v in timings_s.items() if "." not in k))
    fields = provenance.manifest_fields()
    fields["config"] = relative_paths(fields["config"], provenance.source_root)
    return {
        "case_id": result.case_id,
        "status": result.status,
        "reason": safe_text(refs.text(result.reason)),
        **fields,
        **SPACE,
        "labels": labels,
        **({"labels_sha256": labels_sha256} if labels_sha256 else {}),
        "meshes": meshes,
        "timings_s": timings_s,
        "seconds": round(float(seconds), 3),
        "created": provenance.created or utc_now(),
    }


def _labels_sha256(folder: Path) -> str | None:
    """SHA-256 of ``folder/labels.nii.gz`` (None when the case has none)."""
    path = folder / LABELS
    return sha256_file(path) if path.is_file() else None


#: :func:`labels_state` values.
LABELS_SEGMENTED, LABELS_REMEASURED, LABELS_STALE = "segmented", "remeasured", "stale"


def labels_state(case_dir: str | Path, manifest: dict[str, Any] | None = None) -> str:
    """Whether a case's ``labels.nii.gz`` is still the segmentation its manifest describes.

    Parameters
    ----------
    case_dir : str or Path
        A case folder.
    manifest : dict, optional
        Its manifest when already read.

    Returns
    -------
    str
        :data:`LABELS_STALE` when ``labels.nii.gz`` differs from the file the manifest's
        ``labels_sha256`` recorded (edited by hand and not re-measured: ``metrics.json`` no
        longer describes it); :data:`LABELS_REMEASURED` when the manifest has a ``measured``
        record (re-measured by ``medscan measure``, usually after a hand edit) and the labels
        are the ones measured; :data:`LABELS_SEGMENTED` otherwise (the labels ``segment``
        wrote, or a case without labels). A case written before ``labels_sha256`` existed
        cannot be stale.
    """
    folder = Path(case_dir)
    if manifest is None:
        manifest = read_manifest(folder)
    recorded = manifest.get("labels_sha256")
    path = folder / LABELS
    if recorded and path.is_file() and sha256_file(path) != recorded:
        return LABELS_STALE
    return LABELS_REMEASURED if manifest.get("measured") else LABELS_SEGMENTED


def labels_edited_finding(case_id: str) -> Finding:
    """The ``labels_edited`` warning of a case whose labels changed after its metrics."""
    return Finding("labels_edited", "warning",
                   f"{LABELS} was edited after {METRICS} was written: the metrics, index.csv "
                   f"and report.html describe the previous labels; run `medscan measure "
                   f"input=<case folder>` to re-measure {case_id}")


def _write_meshes(result: CaseResult, folder: Path, formats: list[str]) -> list[dict[str, Any]]:
    """Write every surface in every format; the manifest's ``meshes`` entries."""
    entries: list[dict[str, Any]] = []
    if not result.surfaces or not formats:
        return entries
    table = {lab.name: lab for lab in (result.labels.labels.values() if result.labels else [])}
    for name, surface in result.surfaces.items():
        label = table.get(name)
        value = label.value if label is not None else 0
        color = label.color if label is not None else (200, 200, 200)
        info = mesh_summary(surface)
        for fmt in formats:
            rel = mesh_path(name, fmt)
            export_mesh(surface, folder / rel, color,
                        {"tissue": name, "label": value, "case_id": result.case_id})
            entries.append({"tissue": name, "label": value, "format": fmt, "path": rel,
                            **SPACE, **info})
    return entries


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


def _findings(items: list[dict[str, Any]] | None) -> list[Finding]:
    return [Finding(f["code"], f["severity"], f["message"], list(f.get("files") or []),
                    dict(f.get("details") or {})) for f in items or []]


def read_case(case_dir: str | Path, *, arrays: bool = True, meshes: bool = False) -> CaseResult:
    """Read one case folder back into a :class:`~medscan.case.CaseResult`.

    Parameters
    ----------
    case_dir : str or Path
        ``DIR/<case_id>``.
    arrays : bool
        Load ``volume.nii.gz`` (as ``result.volume``) and ``labels.nii.gz`` (as
        ``result.labels``, with the manifest's label table) when present.
    meshes : bool
        Load the surfaces (``result.surfaces``, trimesh, LPS mm), one file per tissue (the
        first of the manifest's formats).

    Returns
    -------
    CaseResult
        ``status, reason, metrics`` (``{}`` when absent), ``findings`` / ``loader_findings``
        (from ``qc.json``), ``provenance``, ``manifest``, ``folder`` and ``files`` (name -> Path
        of the files present, meshes as ``{tissue: {fmt: Path}}``).

    Raises
    ------
    OSError, ValueError
        When the manifest is missing or unreadable.
    """
    folder = Path(case_dir)
    manifest = read_manifest(folder)
    case_id = str(manifest.get("case_id", folder.name))
    qc = read_json(folder / QC) if (folder / QC).is_file() else {}
    files: dict[str, Any] = {}
    for key, name in (("volume", VOLUME), ("labels", LABELS), ("preview", PREVIEW)):
        if (folder / name).is_file():
            files[key] = folder / name
    mesh_files: dict[str, dict[str, Path]] = {}
    for entry in manifest.get("meshes", []):
        p = folder / entry["path"]
        if p.is_file():
            mesh_files.setdefault(entry["tissue"], {})[entry["format"]] = p
    files["meshes"] = mesh_files
    result = CaseResult(
        case_id=case_id,
        status="ok" if manifest.get("status") == "ok" else "failed",
        reason=str(manifest.get("reason", "")),
        metrics=read_json(folder / METRICS) if (folder / METRICS).is_file() else {},
        findings=_findings(qc.get("segmentation_findings")),
        loader_findings=_findings(qc.get("loader_findings")),
        timings_s=dict(manifest.get("timings_s") or {}),
        provenance=Provenance.from_manifest(manifest),
        manifest=manifest,
        folder=folder,
        files=files,
    )
    if labels_state(folder, manifest) == LABELS_STALE:
        result.findings.append(labels_edited_finding(case_id))
    if arrays and "volume" in files:
        result.volume = Volume.from_nifti(files["volume"], case_id=case_id)
    if arrays and "labels" in files:
        result.labels = LabelMap.from_nifti(files["labels"], manifest.get("labels") or None,
                                            case_id=case_id)
    if meshes:
        from medscan.interrupt import import_holding_interrupt

        trimesh = import_holding_interrupt("trimesh")  # Ctrl-C not swallowed

        for tissue, by_fmt in mesh_files.items():
            path = next(iter(by_fmt.values()))
            loaded = trimesh.load(str(path), force="mesh", process=False)
            result.surfaces[tissue] = loaded
    return result


def read_index(output: str | Path) -> list[dict[str, str]]:
    """Rows of ``DIR/index.csv`` (strings, as written)."""
    with open(Path(output) / INDEX, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def rebuild_index(output: str | Path) -> Path:
    """Rewrite ``output/index.csv`` and its gallery ``index.html`` from the case folders.

    Holds an exclusive ``flock`` on ``output/.index.lock`` while reading and writing, so
    concurrent shards writing into one folder never interleave; the file is replaced
    atomically.
    """
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
            writer.writeheader()
            rows: list[dict[str, Any]] = []
            for case in iter_case_dirs(root):
                try:
                    manifest = read_manifest(case)
                except (OSError, ValueError):
                    continue
                metrics: dict[str, Any] = {}
                if (case / METRICS).is_file():
                    with contextlib.suppress(OSError, ValueError):
                        metrics = read_json(case / METRICS)
                row = {k: format_index_cell(k, metrics.get(k)) for k in INDEX_COLUMNS}
                row["case_id"] = manifest.get("case_id", case.name)
                row["status"] = manifest.get("status", "")
                row["reason"] = manifest.get("reason", "")
                row["seconds"] = format_index_cell("seconds", manifest.get("seconds"))
                writer.writerow(row)
                rows.append(row)
            write_text(root / INDEX, buf.getvalue())
            write_gallery(root, rows)  # index.html: the same rows, with previews
            write_batch_report(root, rows, INDEX_COLUMNS)  # report.html: table + histograms
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root / INDEX
