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
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medscan.ct.measure import MeasureOptions, label_names, measure_case
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT
from medscan.io.redact import safe_text
from medscan.volume import Finding, Label, LabelMap, Volume

log = logging.getLogger("medscan.measure")

#: Finding codes a measurement makes: replaced in ``qc.json`` by a re-measurement
#: (``no_lungs`` too, see :func:`_replace_findings`).
MEASURE_CODES = ("lung_truncated", "body_truncated", "mesh_stale", "dicom_seg_stale",
                 "labels_empty", "no_lung_labels", "seg_reference_unchecked", "seg_resampled")
#: Lung label names the lung metrics are measured from (``medscan.ct.tissues``).
LUNG_NAMES = (LUNG_RIGHT, LUNG_LEFT)
#: A ``case_id=`` given by the user: one plain folder name (no path, not hidden).
_CASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
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
        _check_3d(p, volume)
        try:
            labels = LabelMap.from_nifti(p, table, case_id=volume.case_id)
        except Exception as exc:  # nibabel's ImageFileError is no OSError
            raise MeasureError(f"{p.name}: cannot read the label map: {_why(exc, p)}") from None
    _check_grid(labels, volume, p.name)
    if table is None:
        return labels
    present = np.flatnonzero(np.bincount(labels.array.ravel(), minlength=256))
    unknown = sorted(int(v) for v in set(present.tolist()) - {0} - set(table))
    if unknown:
        raise MeasureError(f"{p.name}: label value(s) {', '.join(map(str, unknown))} are not "
                           "in the label table")
    return labels


def _check_3d(path: Path, volume: Volume) -> None:
    """Refuse a NIfTI label map that is not 3-D (nibabel reads only the header here)."""
    import nibabel as nib

    try:
        shape = tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception as exc:  # nibabel's ImageFileError is no OSError
        raise MeasureError(f"{path.name}: cannot read the label map: {_why(exc, path)}"
                           ) from None
    if len(shape) != 3:
        grid = tuple(int(n) for n in volume.hu.shape[::-1])
        raise MeasureError(f"{path.name}: a label map must be 3-D (x, y, z) on the volume's "
                           f"grid {grid}; this one has {len(shape)} axes {shape}")


def _series_uid(files: list[str]) -> str:
    """SeriesInstanceUID of a DICOM volume's first file ("" for a NIfTI volume)."""
    import pydicom

    if not files:
        return ""
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True,
                             specific_tags=["SeriesInstanceUID"])
    except Exception:  # not DICOM (a NIfTI volume's file): nothing to check against
        return ""
    return str(ds.get("SeriesInstanceUID", "") or "")


def check_seg_reference(path: Path, volume: Volume) -> list[Finding]:
    """Check that a DICOM SEG was made from ``volume``'s series.

    A SEG names its source series (ReferencedSeriesSequence). When the volume is a DICOM
    series, a SEG of another series is refused even on the same grid (two reconstructions of
    one scan, e.g. b40f and b70f kernels, share the grid but are different images). When the
    volume is NIfTI (no SeriesInstanceUID) or the SEG names no series, the reference cannot be
    checked: a ``seg_reference_unchecked`` warning says so. On a resampled (unevenly spaced)
    volume a ``seg_resampled`` warning says the labels do not round-trip exactly.

    Returns
    -------
    list of Finding
        Empty when the reference was checked and matches on an evenly spaced volume.

    Raises
    ------
    MeasureError
        The SEG references another series than the volume's.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        refs = {str(item.SeriesInstanceUID)
                for item in ds.get("ReferencedSeriesSequence", [])
                if item.get("SeriesInstanceUID")}
    except Exception as exc:  # read_seg read it already; a header problem is one line
        raise MeasureError(f"{path.name}: cannot read the DICOM SEG: {_why(exc, path)}"
                           ) from None
    series = _series_uid(list(volume.files))
    if series and refs and series not in refs:
        raise MeasureError(f"{path.name}: the DICOM SEG references another series than the "
                           "volume's (ReferencedSeriesSequence does not name its "
                           "SeriesInstanceUID); measure it on the series it was made from")
    findings = []
    if any(f.code == "resampled" for f in volume.findings):
        # The SEG stores one frame per SOURCE slice (medscan.io.dicom_seg: nearest label slice
        # of the uniform grid); back on the uniform grid each label slice is the nearest source
        # frame, so a label map does not round-trip exactly (bone/fat -3 %/+3 % on the uneven
        # QA head CT). Never an ok number without saying so.
        findings.append(Finding(
            "seg_resampled", "warning",
            "the volume is an unevenly spaced series resampled to even spacing; the DICOM SEG "
            "holds labels on the source slices and was placed on the resampled grid by nearest "
            "slice, so volumes can differ by a few percent from the label map the SEG was "
            "made from (exact on evenly spaced series)"))
    if series and refs:
        return findings
    why = ("the volume is not a DICOM series (no SeriesInstanceUID)" if not series
           else "the SEG names no referenced series")
    return [*findings, Finding("seg_reference_unchecked", "warning",
                               "whether the DICOM SEG (labels=) was made from the measured "
                               f"volume could not be checked ({why}); only its grid was "
                               "checked to match")]


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


def label_content(labels: LabelMap) -> tuple[str, list[Finding], bool]:
    """What a label map holds, as ``(failure reason, findings, lungs found)``.

    The same semantics as ``medscan segment``'s "no lungs" failure, for label maps from
    anywhere:

    * no labelled voxel at all: the case fails (``labels_empty``, error): nothing to measure;
    * the label table names lungs (``lung_right`` / ``lung_left``) but the map holds none of
      their voxels: the case fails (``no_lungs``, error); the lung metrics are null, the
      other labels' statistics (``structures``, ``tissues``) are still measured;
    * the table names no lung at all (another tool's labels, a head CT's): the case is ok;
      the lung metrics are null and an info finding (``no_lung_labels``) says that the
      per-structure statistics are what is measured.

    Parameters
    ----------
    labels : LabelMap
        The label map with its table.

    Returns
    -------
    reason : str
        Why the case fails ("" when it does not).
    findings : list of Finding
        The finding described above (empty when lungs are present).
    lungs_found : bool
        Whether any lung voxel is present.
    """
    counts = np.bincount(labels.array.ravel(), minlength=256)
    names = label_names(labels.labels)
    lung_ids = [i for i, n in names.items() if n in LUNG_NAMES]
    lungs_found = bool(sum(int(counts[i]) for i in lung_ids))
    if not counts[1:].any():
        # no file name in written text: a pair's label file may be named after the patient
        reason = "the label map is empty (no labelled voxel): nothing to measure"
        return reason, [Finding("labels_empty", "error", reason)], False
    if lung_ids and not lungs_found:
        listed = ", ".join(names[i] for i in lung_ids)
        reason = (f"no lungs: the label table names {listed} but the label map has no voxel "
                  "of them; lung metrics are null, the other labels are measured")
        return reason, [Finding("no_lungs", "error", reason)], False
    if not lung_ids:
        measured = ", ".join(names[i] for i in names if counts[i]) or "none"
        return "", [Finding(
            "no_lung_labels", "info",
            f"the label table names no lung ({' / '.join(LUNG_NAMES)}): lung metrics, density "
            "bands and regions are null; per-structure statistics (structures) are measured "
            f"for the labels present: {measured}",
            details={"labels": [names[i] for i in names if counts[i]]})], False
    return "", [], True


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
    _reason, content, lungs_found = label_content(result.labels)
    metrics, findings = measure_case(result.volume, result.labels, None, options,
                                     surfaces=result.surfaces, lungs_found=lungs_found)
    findings = content + findings
    before = (result.metrics or {}).get("structures") or {}
    old_tissues = (result.metrics or {}).get("tissues") or {}
    stale = []
    for name, entry in metrics.get("structures", {}).items():
        if entry.get("surface_area_mm2") is None:
            continue
        old = before.get(name)
        # a mesh found stale once stays stale (its area was nulled: not the labels' any more)
        same = (_unchanged(old, entry) and old.get("surface_area_mm2") is not None) if old \
            else old_tissues.get(name, {}).get("voxels") == entry["voxels"]
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
    """Segmentation findings with the measurement ones replaced by a new measurement's.

    An old ``no_lungs`` (``segment``'s, with its reason) stays while the labels still hold no
    lung, and goes once they do (lungs painted by hand).
    """
    no_lungs = any(f.code == "no_lungs" for f in new)
    kept = [f for f in old
            if f.code not in MEASURE_CODES and (f.code != "no_lungs" or no_lungs)]
    if any(f.code == "no_lungs" for f in kept):
        new = [f for f in new if f.code != "no_lungs"]
    return kept + list(new)


def remeasured_status(findings: list[Finding]) -> tuple[str, str]:
    """``(status, reason)`` of a re-measured case from its segmentation findings.

    ``failed`` when an error finding remains: the re-measure's own (``labels_empty``,
    ``no_lungs``; a ``segment`` ``no_lungs`` is kept while the labels still hold no lung, see
    :func:`_replace_findings`) or one the re-measure cannot lift (``too_short_to_mesh``,
    ``output_failed``: no meshes, no DICOM SEG); the reason is their messages. Otherwise
    ``ok``: a segment-failed case whose lungs were painted by hand is ``ok`` now, an ``ok``
    case whose lungs were erased is ``failed``.
    """
    errors = [f.message for f in findings if f.severity == "error"]
    return ("failed", "; ".join(errors)) if errors else ("ok", "")


def measured_record(options: MeasureOptions) -> dict[str, Any]:
    """The manifest's ``measured`` record: when, by what, with which measure options."""
    import dataclasses

    from medscan.case import utc_now, versions
    from medscan.hashing import config_hash

    return {"created": utc_now(), "by": "medscan measure",
            "config_hash": config_hash(dataclasses.asdict(options)),
            "versions": versions()}


def measure_case_dir(case_dir: Path, options: MeasureOptions) -> tuple[str, str]:
    """Re-measure one case folder in place; returns its (status, reason) for the summary.

    ``metrics.json``, ``qc.json``, ``report.html`` and the manifest's ``status``, ``reason`` and
    ``measured`` change (:func:`remeasured_status`), through
    :func:`medscan.io.case.update_measurements`; every other file of the folder is kept.

    Raises
    ------
    MeasureError
        The folder cannot be read or measured (the folder is left untouched).
    """
    from medscan.io.case import update_measurements

    result = _read_case(case_dir)
    metrics, findings = remeasure(result, options)
    findings += _seg_stale(case_dir, result.labels)
    result.metrics = metrics
    result.findings = _replace_findings(result.findings, findings)
    result.status, result.reason = remeasured_status(result.findings)
    update_measurements(case_dir, result, measured_record(options))
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


def _read_case(case_dir: Path) -> Any:
    """``read_case`` of one folder; an unreadable file is named (``<case>/labels.nii.gz``).

    The manifest and JSON files first, then each array and mesh file on its own, so that the
    message says which file is truncated or broken.

    Raises
    ------
    MeasureError
        A file of the case cannot be read (nothing is written).
    """
    from medscan.interrupt import import_holding_interrupt

    trimesh = import_holding_interrupt("trimesh")  # Ctrl-C not swallowed

    from medscan.io.case import read_case

    try:
        result = read_case(case_dir, arrays=False, meshes=False)
    except Exception as exc:  # bad JSON, a missing manifest
        raise MeasureError(f"{case_dir.name}: cannot read the case: {_why(exc, case_dir)}"
                           ) from None
    table = result.manifest.get("labels") or None
    steps = []
    if "volume" in result.files:
        steps.append((result.files["volume"], "volume",
                      lambda p: Volume.from_nifti(p, case_id=result.case_id)))
    if "labels" in result.files:
        steps.append((result.files["labels"], "labels",
                      lambda p: LabelMap.from_nifti(p, table, case_id=result.case_id)))
    for tissue, by_fmt in result.files.get("meshes", {}).items():
        path = next(iter(by_fmt.values()))
        steps.append((path, f"mesh:{tissue}",
                      lambda p: trimesh.load(str(p), force="mesh", process=False)))
    for path, key, load in steps:
        try:
            value = load(path)
        except Exception as exc:  # nibabel's ImageFileError, gzip's EOFError, a bad mesh
            rel = path.relative_to(case_dir.parent)
            raise MeasureError(f"{rel}: cannot read it: {_why(exc, path)}") from None
        if key.startswith("mesh:"):
            result.surfaces[key[5:]] = value
        else:
            setattr(result, key, value)
    return result


def pair_case_id(input_hash: str, salt: str | None = None) -> str:
    """Pseudonymous case id ``ct-<10 hex>`` of a ``volume=``/``labels=`` pair.

    A keyed hash (:func:`medscan.dicom.identity.pseudonym`, HMAC under the id secret) of the
    pair's input hash (SHA-256 over the volume's, the label map's and the label table's file
    contents, as recorded in the manifest): stable for the same files, never the file names
    (a label file named after the patient must not name the case folder).
    """
    from medscan.dicom.identity import pseudonym

    return pseudonym("ct", input_hash, salt, domain="measure-pair")


def measure_pair(cfg: Mapping[str, Any], options: MeasureOptions, output: Path
                 ) -> tuple[str, str, str]:
    """Measure ``volume=`` + ``labels=`` (+ ``label_table=``) into a new case folder.

    Returns ``(status, reason, case_id)`` (the case id: ``case_id=`` or :func:`pair_case_id`).

    Raises
    ------
    MeasureError
        Unreadable inputs, label map not on the volume's grid, bad label table.
    """
    from medscan.case import CaseResult, Provenance
    from medscan.io.case import write_case
    from medscan.io.dicom_seg import is_dicom_seg

    volume_path, labels_path = Path(str(cfg["volume"])), Path(str(cfg["labels"]))
    t0 = time.perf_counter()
    volume = _read_volume(volume_path, "case")
    findings: list[Finding] = []
    if cfg.get("label_table"):
        table = read_label_table(cfg["label_table"])
    elif is_dicom_seg(labels_path):
        table = None  # the SEG's own segment names
    else:
        table = _default_table(cfg)
    labels = read_label_map(labels_path, table, volume)
    if is_dicom_seg(labels_path):
        findings += check_seg_reference(labels_path, volume)
    config = dict(cfg)
    if table is None or cfg.get("label_table"):  # record the table used, never its path
        config["tissues"] = labels.labels_dict()
    files = [*(volume.files or [volume_path]), labels_path] + (
        [Path(str(cfg["label_table"]))] if cfg.get("label_table") else [])
    root = volume_path if volume_path.is_dir() else volume_path.parent
    # the private keys (paths, salt) are dropped by Provenance itself (medscan.case)
    provenance = Provenance.for_files(files, config, root=root,
                                      clock_start=t0, salt=cfg.get("salt"))
    provenance.measured = measured_record(options)
    case_id = str(cfg.get("case_id") or pair_case_id(provenance.input_hash, cfg.get("salt")))
    volume.case_id = labels.case_id = case_id
    reason, content, lungs_found = label_content(labels)
    t1 = time.perf_counter()
    metrics, coverage = measure_case(volume, labels, None, options, lungs_found=lungs_found)
    result = CaseResult(case_id=case_id, volume=volume, labels=labels, metrics=metrics,
                        findings=findings + content + coverage,
                        timings_s={"measure": round(time.perf_counter() - t1, 4)})
    if reason:
        result.fail(reason)
    write_case(result, output, provenance, mesh_formats=(), outputs=("nifti",), index=False)
    return result.status, result.reason, case_id


def _read_volume(path: Path, case_id: str) -> Volume:
    """Read ``volume=``: a NIfTI HU volume, or a DICOM series (folder or file).

    A DICOM series is loaded as ``segment`` loads it (``uniform=True``: the grid a DICOM SEG of
    it is read onto). The caller sets the case id (:func:`pair_case_id`).
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
    case_id = cfg.get("case_id")
    if case_id is not None and not _CASE_ID.fullmatch(str(case_id)):
        raise JobError(f"case_id {case_id!r}: use letters, digits, '.', '_' and '-' only, not "
                       "starting with '.' (it names the case folder)")
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
        0 when every case was measured and is ok, 1 when one could not be measured or is
        failed (named on stderr with the reason; the others are still measured), 2 for a
        job-level error.
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
    return 1 if any(status != "ok" for _, status, _ in run.rows) else 0


def _measure_batch(run: _Run, source: Path) -> None:
    from medscan.batch import case_lock, select_shard

    try:
        cases = _cases(source)
    except JobError as exc:
        run.rows.append((source.name, "error", str(exc)))
        print(f"medscan measure: {safe_text(str(exc))}", file=sys.stderr)
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

    ``work`` returns ``(status, reason)`` or ``(status, reason, case_id)``: a measured pair's
    row is named by its case id (its label file's name may be a patient's), one that could not
    be measured by the file. The row is printed once, when the case is done. Messages name
    paths relative to ``root`` (the input folder), never absolute ones.
    """
    try:
        status, reason, *named = work()
        row = (named[0] if named else name, status, reason)
    except MeasureError as exc:
        row = (name, "error", str(exc))
    except Exception as exc:  # one bad case must not stop the batch
        why = _why(exc, root / "_")
        row = (name, "error", f"{name}: {type(exc).__name__}: {why}")
    run.rows.append(row)
    line = f"{row[0]}: {row[1]}" + (f" ({row[2]})" if row[2] else "")
    print(f"medscan measure: {safe_text(line)}", file=sys.stderr)


def _rebuild_index(output: Path) -> None:
    from medscan.batch import rebuild_index

    if output.is_dir():
        rebuild_index(output)


def _summary(rows: list[tuple[str, str, str]]) -> None:
    """The totals (each case's line was printed when it was done)."""
    errors = sum(s == "error" for _, s, _ in rows)
    failed = sum(s == "failed" for _, s, _ in rows)
    print(f"medscan measure: {len(rows) - errors} measured ({failed} failed), {errors} could "
          "not be measured", file=sys.stderr)
