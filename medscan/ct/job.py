"""The ``medscan segment`` batch: every CT series under ``input`` becomes a case folder.

Called by ``jobs/segment.py`` (the Hydra entry point) with the composed config; see
``docs/ct.md`` for the output contract.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import Any

from medscan.backend import BackendUnavailable, get_backend
from medscan.batch import (
    atomic_case_dir,
    case_is_current,
    config_hash,
    hash_inputs,
    rebuild_index,
    remove_stale,
    select_shard,
)
from medscan.ct.mesh import SPACE, MeshParams
from medscan.ct.pipeline import CaseOptions, process_volume
from medscan.ct.segment import SegmentParams
from medscan.ct.tissues import TissueTable
from medscan.io import MANIFEST, QC, write_json

log = logging.getLogger("medscan.segment")

#: Config keys that do not change a case's outputs (left out of the config hash).
RUNTIME_KEYS = ("input", "output", "overwrite", "shard", "num_shards", "salt", "workers",
                "progress", "backend")
SAMPLE = "ct-lungdx-a0002-b40f"
_PACKAGES = ("medscan", "numpy", "scipy", "scikit-image", "connected-components-3d", "trimesh",
             "fast-simplification", "nibabel", "pydicom", "matplotlib")


def sample_path() -> Path:
    """The embedded sample chest CT (package data)."""
    return Path(str(files("medscan") / "sample" / SAMPLE))


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the outputs."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def options_from_config(cfg: dict[str, Any]) -> CaseOptions:
    """Build :class:`CaseOptions` from the plain (resolved) config dict."""
    return CaseOptions(
        tissues=TissueTable.from_config(cfg["tissues"]),
        segment=SegmentParams.from_config(cfg.get("segment")),
        mesh=MeshParams.from_config(cfg.get("mesh")),
        mesh_labels=list(cfg.get("mesh_labels") or []),
        mesh_formats=list(cfg.get("mesh_formats") or []),
        min_slices=int(cfg.get("min_slices", 3)),
        preview=bool(cfg.get("preview", True)),
    )


def write_volume_case(
    volume: Any,
    output: str | Path,
    options: CaseOptions,
    be: Any = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one in-memory volume as ``output/<case_id>/`` in the job's layout (e.g. napari).

    Same files and manifest as ``medscan segment`` (input hashes from ``volume.files`` when they
    exist), written atomically, then ``index.csv`` is rebuilt.

    Returns
    -------
    dict
        The manifest.
    """
    be = be or get_backend("cpu")
    output = Path(output)
    files = [Path(f) for f in volume.files if Path(f).is_file()]
    root = Path(os.path.commonpath([str(f.parent) for f in files])) if files else output
    input_hashes, input_hash = hash_inputs(files, root)
    cfg = config or {"tissues": options.tissues.name, "segment": options.segment.to_dict(),
                     "mesh": options.mesh.to_dict(), "mesh_labels": options.mesh_labels,
                     "mesh_formats": options.mesh_formats, "min_slices": options.min_slices,
                     "preview": options.preview}
    t0 = time.perf_counter()
    with atomic_case_dir(output, volume.case_id) as tmp:
        result = process_volume(volume, tmp, options, be)
        manifest = {
            "case_id": volume.case_id, "status": result.status, "reason": result.reason,
            "config": cfg, "config_hash": config_hash(cfg), "input_hashes": input_hashes,
            "input_hash": input_hash, "versions": versions(), "backend": be.name,
            **SPACE, "labels": options.tissues.labels_dict(), "meshes": result.meshes,
            "timings_s": result.timings_s, "seconds": round(time.perf_counter() - t0, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(tmp / MANIFEST, manifest)
    rebuild_index(output)
    return manifest


def _error(message: str) -> int:
    print(f"medscan segment: {message}", file=sys.stderr)
    return 2


def run_segment(cfg: dict[str, Any]) -> int:
    """Run the batch described by ``cfg`` (the resolved ``conf/segment.yaml``).

    Returns
    -------
    int
        0 when no case failed, 1 when one did, 2 for a usage error (bad input path, backend
        unavailable, bad config) -- with a one-line message on stderr.
    """
    try:
        be = get_backend(str(cfg["backend"]["name"]))
    except BackendUnavailable as exc:
        return _error(str(exc))
    try:
        options = options_from_config(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        return _error(f"bad configuration: {exc}")
    from medscan.dicom import SeriesError, discover, load

    source = Path(cfg["input"]) if cfg.get("input") else sample_path()
    if not source.exists():
        return _error(f"input {source} does not exist")
    output = Path(cfg["output"])
    output.mkdir(parents=True, exist_ok=True)
    cfg_for_hash = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}
    cfg_hash = config_hash(cfg_for_hash)

    found = discover(source, salt=cfg.get("salt"), progress=bool(cfg.get("progress")))
    for skipped in found.skipped:
        log.warning("skipped %s: %s", skipped.path, skipped.reason)
    by_id = {s.case_id: s for s in found.series}
    try:
        mine = select_shard(list(by_id), int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1)))
    except ValueError as exc:
        return _error(str(exc))
    log.info("%d CT series under %s; %d in shard %s/%s", len(by_id), source, len(mine),
             cfg.get("shard", 0), cfg.get("num_shards", 1))

    rows: list[tuple[str, str, str, float]] = []
    progress = _progress(bool(cfg.get("progress")))
    with progress:
        task = progress.add_task("segment", total=len(mine))
        for case_id in mine:
            series = by_id[case_id]
            progress.update(task, description=f"segment {case_id}")
            t0 = time.perf_counter()
            remove_stale(output, case_id)
            input_hashes, input_hash = hash_inputs(series.files, source)
            if not cfg.get("overwrite") and case_is_current(output / case_id, input_hash,
                                                            cfg_hash):
                rows.append((case_id, "skipped", "unchanged inputs and config", 0.0))
                progress.advance(task)
                continue
            manifest: dict[str, Any] = {
                "case_id": case_id,
                "status": "failed",
                "reason": "",
                "config": cfg,
                "config_hash": cfg_hash,
                "input_hashes": input_hashes,
                "input_hash": input_hash,
                "versions": versions(),
                "backend": be.name,
                # absolute input paths stay out of outputs (folder names may carry identity)
                "series": {k: v for k, v in series.to_dict().items() if k != "files"},
                **SPACE,
                "labels": options.tissues.labels_dict(),
                "meshes": [],
            }
            with atomic_case_dir(output, case_id) as tmp:
                timings: dict[str, float] = {}
                try:
                    t = time.perf_counter()
                    volume = load(series, workers=cfg.get("workers"),
                                  uniform=bool(cfg.get("uniform")))
                    timings["load"] = round(time.perf_counter() - t, 4)
                    result = process_volume(volume, tmp, options, be, timings)
                    manifest.update(status=result.status, reason=result.reason,
                                    meshes=result.meshes, timings_s=result.timings_s)
                except SeriesError as exc:
                    manifest.update(reason=f"cannot load the series: {exc}", timings_s=timings)
                    write_json(tmp / QC, {"case_id": case_id, "loader_findings": [
                        f.to_dict() for f in series.findings], "segmentation_findings": []})
                except Exception as exc:  # one bad case must not stop the batch
                    log.exception("case %s failed", case_id)
                    manifest.update(reason=f"{type(exc).__name__}: {exc}", timings_s=timings)
                seconds = round(time.perf_counter() - t0, 3)
                manifest["seconds"] = seconds
                manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                write_json(tmp / MANIFEST, manifest)
            rows.append((case_id, manifest["status"], manifest["reason"], seconds))
            if manifest["status"] != "ok":
                log.warning("case %s failed: %s", case_id, manifest["reason"])
            progress.advance(task)

    rebuild_index(output)
    _summary(rows, found.skipped, output)
    return 1 if any(r[1] == "failed" for r in rows) else 0


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled, transient=False,
    )


def _summary(rows: list[tuple[str, str, str, float]], skipped: list[Any], output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"medscan segment -> {output}")
    for col in ("case", "status", "reason", "seconds"):
        table.add_column(col)
    style = {"ok": "green", "failed": "red", "skipped": "cyan"}
    for case_id, status, reason, seconds in rows:
        table.add_row(case_id, f"[{style.get(status, '')}]{status}[/]", reason[:100],
                      f"{seconds:.1f}")
    # logs and CI capture stderr: do not fold long paths at 80 columns there
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    console.print(table)
    if skipped:
        files = Table(title="files skipped by the loader")
        files.add_column("file")
        files.add_column("reason")
        for item in skipped[:50]:
            files.add_row(str(item.path), str(item.reason))
        if len(skipped) > 50:
            files.add_row(f"... and {len(skipped) - 50} more", "")
        console.print(files)
    counts = {s: sum(r[1] == s for r in rows) for s in ("ok", "failed", "skipped")}
    console.print(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped; "
        f"{len(skipped)} file(s) skipped by the loader"
    )
