"""The ``medscan measure`` job: recompute ``metrics.json`` from existing label maps.

Called by ``jobs/measure.py`` (the Hydra entry point) with the composed config
(``conf/measure.yaml``); see ``docs/ct.md`` ("Re-measuring: medscan measure").

Inputs (one of):

* ``input=DIR/<case_id>`` -- one case folder (``medscan segment`` output, or a folder saved from
  napari), or ``input=DIR`` -- a batch folder: every case folder under it, split over shards
  like ``segment`` (``shard``/``num_shards``). The case's ``labels.nii.gz`` (perhaps edited by
  hand) is measured against its ``volume.nii.gz``; ``metrics.json`` and the measurement
  findings of ``qc.json`` are rewritten in place (each file atomically), every other file is
  kept; ``index.csv`` is rebuilt.
* ``volume=X.nii.gz labels=Y.nii.gz [label_table=T.json|yaml] output=DIR`` -- any label map on
  the volume's grid (another tool's, a hand-made one) with its label table, or
  ``volume=SERIES_FOLDER labels=seg.dcm`` -- a DICOM SEG of a DICOM series: a new case folder
  ``DIR/<case_id>/`` (volume, labels, metrics, qc, manifest) written by
  :func:`medscan.io.case.write_case`.

A case that cannot be measured (missing or unreadable NIfTI, a label map on another grid, a
label table that does not parse) is reported with its relative path and the reason, the rest of
the batch goes on, and the job exits 1.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medscan.ct.measure import MeasureOptions, label_names, measure_case
from medscan.io.redact import safe_text
from medscan.volume import Finding, Label, LabelMap, Volume

log = logging.getLogger("medscan.measure")

#: Finding codes :func:`measure_case` makes: replaced in ``qc.json`` by a re-measurement.
MEASURE_CODES = ("lung_truncated", "body_truncated", "mesh_stale", "dicom_seg_stale")
#: Config keys never written into an output folder.
PRIVATE_KEYS = ("input", "output", "volume", "labels", "label_table")
#: Grey for labels of a table without colours.
DEFAULT_COLOR = (128, 128, 128)


class MeasureError(Exception):
    """A per-case problem: one line naming the (relative) path and the reason."""


def _why(exc: BaseException, path: Path) -> str:
    """``exc`` as text without the folders of ``path`` (archive paths may hold names)."""
    text = str(getattr(exc, "strerror", None) or exc)
    for folder in {str(path.parent), str(path.resolve().parent)}:
        text = text.replace(folder + "/", "")
    return safe_text(text)


class JobError(Exception):
    """A job-level problem (bad config, missing input): exit 2."""


@dataclass
class _Run:
    cfg: dict[str, Any]
    options: MeasureOptions
    rows: list[tuple[str, str, str]] = field(default_factory=list)


def read_label_table(path: str | Path) -> dict[int, Label]:
    """Read a label table from JSON or YAML.

    Accepted forms: ``{id: name}``, ``{id: {name, color}}`` (the manifest's ``labels``) or a
    tissues config (``conf/tissues/*.yaml``: ``bands`` / ``other`` / ``structures``).

    Raises
    ------
    MeasureError
        When the file cannot be read or parsed, or ids/names are invalid.
    """
    import yaml

    from medscan.ct.tissues import TissueTable

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise MeasureError(f"label_table {p.name}: cannot read it: {_why(exc, p)}") from None
    if not isinstance(data, Mapping):
        raise MeasureError(f"label_table {p.name}: expected a mapping of label id -> name")
    try:
        if "bands" in data and "structures" in data:
            tissues = TissueTable.from_config(data)
            return {t.label: Label(t.label, t.name, t.color) for t in tissues.all}
        table: dict[int, Label] = {}
        for key, value in data.items():
            color = DEFAULT_COLOR
            if isinstance(value, Mapping) and value.get("color") is not None:
                color = tuple(int(c) for c in value["color"])  # type: ignore[assignment]
            table[int(key)] = Label(int(key), "", color)
        names = label_names(data)
        return {i: Label(i, names[i], table[i].color) for i in names}
    except (KeyError, TypeError, ValueError) as exc:
        raise MeasureError(f"label_table {p.name}: {exc}") from None


def read_label_map(path: str | Path, table: dict[int, Label] | None, volume: Volume
                   ) -> LabelMap:
    """A label map file on ``volume``'s grid, with its label table.

    NIfTI (``.nii``, ``.nii.gz``) or a DICOM SEG (:func:`medscan.io.dicom_seg.read_seg`; its
    segment names are the label table unless ``table`` is given; its slices, from the first to
    the last frame, are placed on the volume's grid without resampling).

    Raises
    ------
    MeasureError
        Unreadable file, values outside 0..255, or not on the volume's grid.
    """
    from medscan.io.dicom_seg import is_dicom_seg

    p = Path(path)
    if is_dicom_seg(p):
        labels = _seg_on_volume(p, table, volume)
        table = table or labels.labels
    else:
        try:
            labels = LabelMap.from_nifti(p, table, case_id=volume.case_id)
        except Exception as exc:  # nibabel's ImageFileError is no OSError
            raise MeasureError(f"{p.name}: cannot read the label map: {_why(exc, p)}") from None
    _check_grid(labels, volume, p.name)
    if table is None:
        return labels
    unknown = sorted(set(np.flatnonzero(np.bincount(labels.array.ravel(), minlength=256)))
                     - {0} - set(table))
    if unknown:
        raise MeasureError(f"{p.name}: label value(s) {unknown} are not in the label table")
    return labels


def _seg_on_volume(path: Path, table: dict[int, Label] | None, volume: Volume) -> LabelMap:
    """A DICOM SEG's labels on ``volume``'s grid (``table`` overrides the SEG's names)."""
    from medscan.io.dicom_seg import SegGeometryError, SegReadError, place_on_grid, read_seg

    try:
        seg = read_seg(path, case_id=volume.case_id)
        array = place_on_grid(seg.array, seg.affine, volume.shape, volume.affine)
    except (SegReadError, SegGeometryError) as exc:
        text = str(exc)
        raise MeasureError(text if text.startswith(path.name) else f"{path.name}: {text}"
                           ) from None
    return LabelMap(array, volume.affine, table or seg.labels, case_id=volume.case_id)


def _check_grid(labels: LabelMap, volume: Volume, name: str) -> None:
    if labels.array.shape != volume.hu.shape:
        raise MeasureError(f"{name}: label map shape {labels.array.shape} differs from the "
                           f"volume's {volume.hu.shape}")
    if not np.allclose(labels.affine, volume.affine, atol=1e-3):
        raise MeasureError(f"{name}: label map and volume have different affines (not the "
                           "same grid)")


def _unchanged(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """A label's voxels are unchanged since ``old`` was measured (count and centroid equal)."""
    return bool(old) and old.get("voxels") == new.get("voxels") and \
        old.get("centroid_lps_mm") == new.get("centroid_lps_mm")


def remeasure(result: Any, options: MeasureOptions) -> tuple[dict[str, Any], list[Finding]]:
    """New metrics and measurement findings of a case read back with ``read_case``.

    Surface areas come from the case's meshes, but only for labels whose voxels are unchanged
    since the previous ``metrics.json`` (same count and centroid): an edited label's mesh no
    longer describes it, so its area is null and a ``mesh_stale`` finding says so.
    """
    if result.volume is None or result.labels is None:
        raise MeasureError(f"{result.case_id}: no volume.nii.gz / labels.nii.gz to measure"
                           + (f" (segment failed: {result.reason})" if result.reason else ""))
    _check_grid(result.labels, result.volume, "labels.nii.gz")
    metrics, findings = measure_case(result.volume, result.labels, None, options,
                                     surfaces=result.surfaces)
    before = (result.metrics or {}).get("structures") or {}
    old_tissues = (result.metrics or {}).get("tissues") or {}
    stale = []
    for name, entry in metrics.get("structures", {}).items():
        if entry.get("surface_area_mm2") is None:
            continue
        old = before.get(name)
        same = _unchanged(old, entry) if old else (
            old_tissues.get(name, {}).get("voxels") == entry["voxels"])
        if not same:
            entry["surface_area_mm2"] = None
            stale.append(name)
    if stale:
        findings.append(Finding(
            "mesh_stale", "warning",
            f"label(s) {', '.join(stale)} changed since their meshes were made: the meshes and "
            "preview.png show the old labels and no surface area is reported for them "
            "(medscan measure does not re-mesh)",
            details={"structures": stale}))
    return metrics, findings


def _replace_findings(old: list[Finding], new: list[Finding]) -> list[Finding]:
    """Segmentation findings with the measurement ones replaced by a new measurement's."""
    return [f for f in old if f.code not in MEASURE_CODES] + list(new)


def measure_case_dir(case_dir: Path, options: MeasureOptions) -> tuple[str, str]:
    """Re-measure one case folder in place; returns its (status, reason) for the summary.

    Only ``metrics.json`` and ``qc.json`` change (and ``report.html``, rebuilt from them), through
    :func:`medscan.io.case.update_measurements`; every other file of the folder is kept.

    Raises
    ------
    MeasureError
        The folder cannot be read or measured (the folder is left untouched).
    """
    from medscan.io.case import read_case, update_measurements

    try:
        result = read_case(case_dir, arrays=True, meshes=True)
    except Exception as exc:  # nibabel's ImageFileError, a broken mesh, bad JSON: one line
        raise MeasureError(f"{case_dir.name}: cannot read the case: {_why(exc, case_dir)}"
                           ) from None
    metrics, findings = remeasure(result, options)
    findings += _seg_stale(case_dir, result.labels)
    result.metrics = metrics
    result.findings = _replace_findings(result.findings, findings)
    update_measurements(case_dir, result)
    return result.status, result.reason


def _seg_stale(case_dir: Path, labels: LabelMap) -> list[Finding]:
    """A ``dicom_seg_stale`` warning when the case's ``seg.dcm`` no longer holds its labels.

    ``measure`` cannot rewrite the SEG (a case folder keeps no path to the source DICOM files).
    Checked when the SEG's frames lie on the label grid (an evenly spaced series); the SEG of
    a resampled series is read back by nearest slice, so it is not compared.
    """
    from medscan.io.dicom_seg import SegGeometryError, SegReadError, place_on_grid, read_seg_labels
    from medscan.io.layout import SEG

    path = case_dir / SEG
    if not path.is_file():
        return []
    try:
        seg = read_seg_labels(path)
        if seg.resampled:
            return []
        same = np.array_equal(place_on_grid(seg.array, seg.affine, labels.shape, labels.affine),
                              labels.array)
    except (SegReadError, SegGeometryError):
        same = False
    if same:
        return []
    return [Finding(
        "dicom_seg_stale", "warning",
        f"{SEG} holds other labels than the labels.nii.gz measured here (edited since "
        "segment wrote it); medscan measure cannot rewrite it (the case folder keeps no path to "
        "the source DICOM): write a new one with medscan.io.dicom_seg.write_seg(labels, "
        "<the series' files>, path) before sending it to a PACS")]


def measure_pair(cfg: Mapping[str, Any], options: MeasureOptions, output: Path) -> tuple[str, str]:
    """Measure ``volume=`` + ``labels=`` (+ ``label_table=``) into a new case folder.

    Raises
    ------
    MeasureError
        Unreadable inputs, label map not on the volume's grid, bad label table.
    """
    from medscan.case import CaseResult, Provenance
    from medscan.io.case import write_case
    from medscan.io.dicom_seg import is_dicom_seg

    volume_path, labels_path = Path(str(cfg["volume"])), Path(str(cfg["labels"]))
    volume = _read_volume(volume_path, cfg.get("case_id") or labels_path.name.split(".")[0])
    case_id = volume.case_id
    if cfg.get("label_table"):
        table = read_label_table(cfg["label_table"])
    elif is_dicom_seg(labels_path):
        table = None  # the SEG's own segment names
    else:
        table = _default_table(cfg)
    labels = read_label_map(labels_path, table, volume)
    t0 = time.perf_counter()
    metrics, findings = measure_case(volume, labels, None, options)
    result = CaseResult(case_id=case_id, volume=volume, labels=labels, metrics=metrics,
                        findings=findings,
                        timings_s={"measure": round(time.perf_counter() - t0, 4)})
    config = {k: v for k, v in cfg.items() if k not in PRIVATE_KEYS}
    files = [*(volume.files or [volume_path]), labels_path] + (
        [Path(str(cfg["label_table"]))] if cfg.get("label_table") else [])
    root = volume_path if volume_path.is_dir() else volume_path.parent
    provenance = Provenance.for_files(files, config, root=root,
                                      clock_start=t0, salt=cfg.get("salt"))
    write_case(result, output, provenance, mesh_formats=(), outputs=("nifti",), index=False)
    return result.status, result.reason


def _read_volume(path: Path, case_id: str) -> Volume:
    """Read ``volume=``: a NIfTI HU volume, or a DICOM series (folder or file).

    A DICOM series is loaded as ``segment`` loads it (``uniform=True``: the grid a DICOM SEG of
    it is read onto) and keeps its own pseudonymous case id.
    """
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            return Volume.from_nifti(path, case_id=case_id)
        from medscan.dicom import load_path

        return load_path(path, uniform=True)
    except Exception as exc:  # nibabel's ImageFileError is no OSError; SeriesError
        raise MeasureError(f"{path.name}: cannot read the volume: {_why(exc, path)}") from None


def _default_table(cfg: Mapping[str, Any]) -> dict[int, Label] | None:
    """The ``tissues`` table of the config (medscan's own labels), None without one."""
    from medscan.ct.tissues import TissueTable

    if not cfg.get("tissues"):
        return None
    tissues = TissueTable.from_config(cfg["tissues"])
    return {t.label: Label(t.label, t.name, t.color) for t in tissues.all}


def _cases(source: Path) -> list[Path]:
    """The case folders of ``input``: itself (a case folder) or those under it (a batch).

    Raises
    ------
    JobError
        When ``input`` is neither.
    """
    from medscan.io.case import is_case_dir, iter_case_dirs

    if is_case_dir(source):
        return [source]
    found = list(iter_case_dirs(source))
    if not found:
        raise JobError(f"input {source} is neither a case folder (no manifest.json) nor a "
                       "batch folder holding case folders")
    return found


def check_config(cfg: Mapping[str, Any]) -> MeasureOptions:
    """Job-level checks: one input form, paths exist, options parse.

    Raises
    ------
    JobError
        One line naming the key and the reason.
    """
    pair = [k for k in ("volume", "labels") if cfg.get(k)]
    if cfg.get("input") and pair:
        raise JobError("give either input=CASE_OR_BATCH_FOLDER or volume=... labels=..., "
                       "not both")
    if not cfg.get("input") and len(pair) != 2:
        raise JobError("nothing to measure: give input=CASE_OR_BATCH_FOLDER, or volume=X.nii.gz "
                       "labels=Y.nii.gz [label_table=T.json] output=DIR")
    if pair and not cfg.get("output"):
        raise JobError("volume=/labels= need output=DIR (the new case folder goes there)")
    for key in ("input", "volume", "labels", "label_table"):
        if cfg.get(key) and not Path(str(cfg[key])).exists():
            raise JobError(f"{key} {cfg[key]} does not exist")
    try:
        from medscan.batch import select_shard

        select_shard([], int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1)))
        return MeasureOptions.from_config(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise JobError(f"bad configuration: {exc}") from None


def run_measure(cfg: dict[str, Any]) -> int:
    """Run ``medscan measure`` as described by ``cfg`` (the resolved ``conf/measure.yaml``).

    Returns
    -------
    int
        0 when every case was measured, 1 when one could not be (named on stderr with the
        reason; the others are still measured), 2 for a job-level error.
    """
    try:
        options = check_config(cfg)
    except JobError as exc:
        print(f"medscan measure: {exc}", file=sys.stderr)
        return 2
    run = _Run(dict(cfg), options)
    if cfg.get("input"):
        _measure_batch(run, Path(str(cfg["input"])))
    else:
        output = Path(str(cfg["output"]))
        name = Path(str(cfg["labels"])).name
        _one(run, name, lambda: measure_pair(cfg, options, output), Path(str(cfg["labels"])).parent)
        _rebuild_index(output)
    _summary(run.rows)
    return 1 if any(status == "error" for _, status, _ in run.rows) else 0


def _measure_batch(run: _Run, source: Path) -> None:
    from medscan.batch import case_lock, select_shard

    try:
        cases = _cases(source)
    except JobError as exc:
        run.rows.append((source.name, "error", str(exc)))
        log.error("%s", exc)
        return
    from medscan.io.layout import INDEX

    single = cases == [source]
    root = source.parent if single else source
    # a batch: the input folder, or the folder around a single case when it holds index.csv;
    # only then are its locks taken and its index rebuilt (never in an arbitrary parent)
    batch = not single or (root / INDEX).is_file()
    by_id = {c.name: c for c in cases}
    mine = select_shard(list(by_id), int(run.cfg.get("shard", 0)),
                        int(run.cfg.get("num_shards", 1)))
    for case_id in mine:
        folder = by_id[case_id]
        work = functools.partial(measure_case_dir, folder, run.options)
        if not batch:
            _one(run, case_id, work, root)
            continue
        # the same per-case lock as `medscan segment`: never measure a case being rewritten
        with case_lock(root, case_id) as held:
            if held:
                _one(run, case_id, work, root)
    if batch:
        _rebuild_index(root)


def _one(run: _Run, name: str, work: Any, root: Path) -> None:
    """Run one case's ``work``; a :class:`MeasureError` (or any failure) is its row.

    Messages name paths relative to ``root`` (the input folder), never absolute ones.
    """
    try:
        status, reason = work()
        run.rows.append((name, status, reason))
    except MeasureError as exc:
        run.rows.append((name, "error", str(exc)))
        log.error("cannot measure %s", exc)
    except Exception as exc:  # one bad case must not stop the batch
        why = _why(exc, root / "_")
        run.rows.append((name, "error", f"{name}: {type(exc).__name__}: {why}"))
        log.error("cannot measure %s: %s: %s", name, type(exc).__name__, why)


def _rebuild_index(output: Path) -> None:
    from medscan.batch import rebuild_index

    if output.is_dir():
        rebuild_index(output)


def _summary(rows: list[tuple[str, str, str]]) -> None:
    for name, status, reason in rows:
        line = f"{name}: {status}" + (f" ({reason})" if reason else "")
        print(f"medscan measure: {line}", file=sys.stderr)
    errors = sum(s == "error" for _, s, _ in rows)
    print(f"medscan measure: {len(rows) - errors} measured, {errors} could not be measured",
          file=sys.stderr)
