"""The ``medscan segment`` batch: every CT series under ``input`` becomes a case folder.

Called by ``jobs/segment.py`` (the Hydra entry point) with the composed config; see
``docs/ct.md`` for the output contract.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from medscan import rerun
from medscan.backend import BackendUnavailable, get_backend
from medscan.batch import (
    LEASE_S,
    case_is_current,
    case_lock,
    config_hash,
    hash_series,
    lock_busy,
    rebuild_index,
    remove_stale,
    select_shard,
)
from medscan.case import CaseResult, Provenance, public_config, versions
from medscan.ct.analyse import CaseOptions, analyse, case_config, preload_modules
from medscan.ct.prefetch import Prefetcher
from medscan.defaults import segment_defaults
from medscan.dicom.discover import LostSeries
from medscan.dicom.identity import SecretError, secret_fingerprint
from medscan.io.case import LABELS_SEGMENTED, LABELS_STALE, labels_state, write_case_folder
from medscan.io.casedir import output_error
from medscan.io.layout import LABELS, METRICS, read_manifest
from medscan.io.redact import (
    FileRefs,
    relative_to_root,
    safe_text,
    series_block,
    series_metadata,
)
from medscan.memory import CaseMemory
from medscan.volume import Finding, Volume

log = logging.getLogger("medscan.segment")

#: Bytes written (and synced) by the output probe before any work.
PROBE_BYTES = 1 << 20
SAMPLE = "ct-lungdx-a0002-b40f"

__all__ = ["CaseOptions", "JobError", "OutputCheck", "check_job", "job_config", "run_segment",
           "sample_path", "versions", "write_volume_case"]


def sample_path() -> Path:
    """The embedded sample chest CT (package data)."""
    return Path(str(files("medscan") / "sample" / SAMPLE))


def job_config(cfg: dict[str, Any], options: CaseOptions) -> dict[str, Any]:
    """The config recorded in a manifest.

    The run's settings without input/output paths, the id secret and the scratch folder
    (:data:`medscan.case.PRIVATE_KEYS`), and the case config (:func:`case_config`) as hashed.
    """
    run = public_config(cfg)
    return {**run, **case_config(options, bool(cfg.get("uniform")), bool(cfg.get("free_text")))}


def write_volume_case(
    volume: Volume,
    output: str | Path,
    options: CaseOptions,
    be: Any = None,
    *,
    uniform: bool = True,
    free_text: bool = False,
) -> dict[str, Any]:
    """Analyse one in-memory volume and write it as ``output/<case_id>/`` (Python API).

    :func:`~medscan.ct.analyse.analyse` then :func:`~medscan.io.case.write_case`: the same
    files and manifest as ``medscan segment`` (input hashes from ``volume.files`` when they
    exist, the same config hash for the same options), then ``index.csv`` is rebuilt.

    Returns
    -------
    dict
        The manifest.
    """
    be = be or get_backend("cpu")
    t0 = time.perf_counter()
    config = case_config(options, uniform, free_text)
    provenance = Provenance.for_volume(volume, config, free_text=free_text, backend=be.name,
                                       clock_start=t0)
    result = analyse(volume, options, be)
    write = write_case_folder(result, output, provenance, mesh_formats=options.mesh_formats,
                              outputs=options.outputs, report=options.report)
    return dict(write.manifest or {})


class JobError(Exception):
    """A job-level failure (output not writable, disk full, no id secret): exit 2, one line."""


def _error(message: str) -> int:
    print(f"medscan segment: {safe_text(message)}", file=sys.stderr)
    return 2


def check_output(output: Path) -> None:
    """Create ``output`` and prove it writable (a probe file written, synced and removed).

    Raises
    ------
    JobError
        Naming the folder and the reason (read-only file system, permission denied, no space
        left on device, ...), before any case is started.
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot create the output folder {output}: {exc.strerror or exc}") from exc
    probe = output / f".write-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise JobError(f"output folder {output} is not writable: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class OutputCheck(Callback):
    """Hydra callback: :func:`check_output` before Hydra makes its run folder inside ``output``.

    Registered in ``conf/segment.yaml`` (``hydra.callbacks``). A failure prints one line and
    exits 2 (Hydra would otherwise end in a traceback while creating ``output/.hydra``).
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:  # noqa: D102
        self._check(config)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:  # noqa: D102
        self._check(config)

    @staticmethod
    def _check(config: Any) -> None:
        try:
            from omegaconf import OmegaConf

            cfg = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                   for k, v in config.items() if k != "hydra"}
        except Exception:  # an unusable config: run_segment reports it
            return
        try:
            check_job(cfg)
        except JobError as exc:
            raise SystemExit(_error(str(exc))) from None


def check_job(cfg: dict[str, Any]) -> tuple[Any, CaseOptions, str]:
    """Every job-level check, in order, before anything is written into ``output``.

    Config values (backend, case options, shard), the input path, the pseudonym secret, then
    the output folder (:func:`check_output`, which creates it). Run by :class:`OutputCheck`
    before Hydra makes ``output/.hydra``, and again by :func:`run_segment` (API callers).

    Returns
    -------
    tuple
        The backend, the :class:`CaseOptions` and the secret's fingerprint.

    Raises
    ------
    JobError
        One line naming the key or path and the reason.
    """
    try:
        be = get_backend(str(cfg["backend"]["name"]))
    except BackendUnavailable as exc:
        raise JobError(str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise JobError(f"bad configuration: backend: {exc}") from None
    try:
        check_switches(cfg, segment_defaults())
        options = CaseOptions.from_config(cfg)
        select_shard([], int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1)))
    except (KeyError, TypeError, ValueError) as exc:
        raise JobError(f"bad configuration: {exc}") from None
    source = Path(str(cfg["input"])) if cfg.get("input") else sample_path()
    if not source.exists():  # nothing is created for a bad input
        raise JobError(f"input {source} does not exist")
    try:
        fingerprint = secret_fingerprint(cfg.get("salt"))
    except SecretError as exc:
        raise JobError(str(exc)) from None
    if not cfg.get("output"):
        raise JobError("bad configuration: output is not set")
    check_output(Path(str(cfg["output"])))
    return be, options, fingerprint


def check_switches(cfg: dict[str, Any], defaults: dict[str, Any], where: str = "") -> None:
    """Raise ValueError for a value given to a true/false key that is not true or false.

    Hydra passes ``overwrite=no`` or ``overwrite=0`` on as the string ``"no"`` / the number 0,
    and Python reads a non-empty string as true: the job would overwrite when told "no".
    Every key whose default in ``conf/segment.yaml`` is a boolean takes ``true`` or ``false``
    only (at any depth).
    """
    for key, default in defaults.items():
        if key not in cfg:
            continue
        if isinstance(default, dict) and isinstance(cfg[key], dict):
            check_switches(cfg[key], default, f"{where}{key}.")
        elif isinstance(default, bool) and not isinstance(cfg[key], bool):
            raise ValueError(f"{where}{key} takes true or false, got {cfg[key]!r}")


def _job_level(exc: BaseException, output: Path) -> OSError | None:
    """The OSError in ``exc``'s chain that stops the whole job (:func:`output_error`)."""
    return output_error(exc, output)


def _traceback(exc: BaseException, refs: FileRefs) -> str:
    """Traceback for the log: frames by module file name and line, message scrubbed of paths."""
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [f"  {Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames[-8:]]
    return "\n".join([*lines, refs.text(f"{type(exc).__name__}: {exc}")])


@dataclass
class _Job:
    """What every case of one run shares."""

    cfg: dict[str, Any]
    source: Path
    output: Path
    options: CaseOptions
    be: Any
    fingerprint: str
    rows: list[tuple[str, str, str, float]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=versions)
    prefetch: Prefetcher | None = None

    @property
    def lease_s(self) -> float:
        """Seconds of a case writer's lease (``lease_s``)."""
        return float(self.cfg.get("lease_s") or LEASE_S)

    def load(self, series: Any, cancel: Any = None) -> Volume:
        """:func:`medscan.dicom.load` with this run's settings (``workers``, ``uniform``).

        A load ahead (``cancel`` given: :class:`Prefetcher`, while the current case computes)
        decodes in one worker process; a second one would take the CPU of that analysis.
        """
        from medscan.dicom import load

        return load(series, workers=self.cfg.get("workers"), uniform=bool(self.cfg.get("uniform")),
                    cancel=cancel, processes=1 if cancel is not None else None)

    def will_process(self, series: Any) -> str | None:
        """The inputs' hash of a case this run would load now; None when it would not.

        :func:`_locked_case`'s checks made without the case lock, for :class:`Prefetcher`'s
        guess of the next case: None for a series with no loadable file, a case another run
        seems to hold (:func:`~medscan.batch.lock_busy`), hand-edited labels that are kept
        (:func:`_kept_edit`), unreadable inputs, or a case that is current.
        """
        if isinstance(series, LostSeries) or lock_busy(self.output, series.case_id,
                                                       self.lease_s):
            return None
        overwrite = bool(self.cfg.get("overwrite"))
        if not overwrite and _kept_edit(self.output / series.case_id):
            return None
        try:
            _, input_hash = hash_series(series.files)
        except OSError:
            return None
        if not overwrite and case_is_current(self.output / series.case_id, input_hash,
                                             self.cfg_hash):
            return None
        return input_hash or None

    @property
    def case_cfg(self) -> dict[str, Any]:
        """What the config hash covers (:func:`~medscan.ct.analyse.case_config`)."""
        return case_config(self.options, bool(self.cfg.get("uniform")),
                           bool(self.cfg.get("free_text")))

    @property
    def cfg_hash(self) -> str:
        """SHA-256 of :attr:`case_cfg`."""
        return config_hash(self.case_cfg)

    def provenance(self, files: list[Any], inputs: list[dict[str, Any]], input_hash: str,
                   series: dict[str, Any], t0: float) -> Provenance:
        """The provenance of one case of this run (inputs already hashed)."""
        return Provenance(
            config=job_config(self.cfg, self.options), config_hash=self.cfg_hash,
            inputs=inputs, input_hash=input_hash, id_secret_fingerprint=self.fingerprint,
            versions=self.versions, backend=self.be.name, series=series,
            source_files=[str(f) for f in files], source_root=str(self.source), clock_start=t0)

    def write(self, result: CaseResult, provenance: Provenance) -> Any:
        """:func:`~medscan.io.case.write_case_folder` with this run's settings."""
        return write_case_folder(
            result, self.output, provenance, mesh_formats=self.options.mesh_formats,
            outputs=self.options.outputs, report=self.options.report,
            label_table=self.options.tissues.labels_dict(),
            lease_s=float(self.cfg.get("lease_s") or LEASE_S), scratch=_scratch(self.cfg),
            index=False)


def _case(job: _Job, series: Any, blocking: bool) -> bool:
    """Handle one case under its lock; False when another run holds it (try again later).

    Every per-case error ends as a row (and, when possible, a ``failed`` case folder); only
    job-level errors (:func:`_job_level`) propagate, as :class:`JobError`.
    """
    case_id = series.case_id
    try:
        with case_lock(job.output, case_id, blocking=blocking, on_wait=lambda holder: log.warning(
                "case %s is being written by another run (%s); waiting for it", case_id,
                holder), lease_s=float(job.cfg.get("lease_s") or LEASE_S)) as mine:
            if not mine:
                return False
            if isinstance(series, LostSeries):
                _lost_case(job, series)
            else:
                _locked_case(job, series)
            rerun.case_finished(job.output, case_id)  # as this run leaves it (medscan.rerun)
    except OSError as exc:  # the lock file itself cannot be made: the output folder broke
        if (stop := _job_level(exc, job.output)) is not None:
            raise JobError(f"output folder {job.output}: {stop.strerror or stop} "
                           f"(stopped at case {case_id}; a rerun resumes)") from exc
        raise JobError(f"output folder {job.output}: cannot lock case {case_id}: "
                       f"{exc.strerror or exc}") from exc
    return True


def _locked_case(job: _Job, series: Any) -> None:
    """Body of :func:`_case`, run while the case lock is held."""
    case_id = series.case_id
    t0 = time.perf_counter()
    refs = FileRefs(series.files, job.source)
    try:
        remove_stale(job.output, case_id, float(job.cfg.get("lease_s") or LEASE_S))
        try:
            inputs, input_hash = hash_series(series.files)
        except OSError as exc:  # unreadable input: the load below fails with the reason
            log.warning("case %s: cannot hash its inputs: %s", case_id,
                        refs.text(f"{exc.strerror or exc}"))
            inputs, input_hash = [], ""
        for f, item in zip(series.files, inputs, strict=False):
            refs.hashes[str(f)] = item["sha256"]
        if not job.cfg.get("overwrite") and (kept := _kept_edit(job.output / case_id)):
            job.rows.append(kept)
            log.warning("case %s %s", case_id, kept[2])
            return
        if input_hash and not job.cfg.get("overwrite") and case_is_current(
                job.output / case_id, input_hash, job.cfg_hash):
            job.rows.append((case_id, "skipped", "unchanged inputs and config", 0.0))
            return
        status, reason = _write_case(job, series, refs, inputs, input_hash, t0)
    except Exception as exc:  # one bad case must not stop the batch
        if (stop := _job_level(exc, job.output)) is not None:
            raise JobError(f"output folder {job.output}: {stop.strerror or stop} "
                           f"(stopped at case {case_id}; a rerun resumes)") from exc
        status, reason = "failed", refs.text(f"{type(exc).__name__}: {exc}")
        log.error("case %s failed:\n%s", case_id, _traceback(exc, refs))
    seconds = round(time.perf_counter() - t0, 3)
    job.rows.append((case_id, status, reason, seconds))
    if status != "ok":
        log.warning("case %s failed: %s", case_id, reason)


def _kept_edit(case_dir: Path) -> tuple[str, str, str, float] | None:
    """The row of a case whose labels were edited by hand, which a rerun never replaces.

    A case re-measured by ``medscan measure`` (a ``measured`` record: its labels were edited,
    e.g. in napari) or whose ``labels.nii.gz`` differs from the one its manifest recorded
    (:func:`medscan.io.case.labels_state`) is kept as it is without ``overwrite=true``, ok or
    failed: re-segmenting it would silently destroy the manual work. The row's status is the
    case's own, ``stale`` when its metrics do not describe its labels (both make the job
    exit 1). None for any other case (no folder, or the labels ``segment`` wrote).
    """
    try:
        manifest = read_manifest(case_dir)
        state = labels_state(case_dir, manifest)
    except (OSError, ValueError):
        return None
    if state == LABELS_SEGMENTED:
        return None
    redo = "overwrite=true re-segments it (the edit is lost)"
    if state == LABELS_STALE:
        return (case_dir.name, "stale",
                f"kept: {LABELS} edited by hand and NOT re-measured ({METRICS}, index.csv and "
                f"report.html describe the previous labels): run `medscan measure "
                f"input=<output>/{case_dir.name}`; {redo}", 0.0)
    status = "ok" if manifest.get("status") == "ok" else "failed"
    why = f" ({manifest.get('reason')})" if status == "failed" and manifest.get("reason") else ""
    return (case_dir.name, status,
            f"kept: {LABELS} edited by hand (re-measured with medscan measure; {status}{why}); "
            f"{redo}", 0.0)


def _lost_case(job: _Job, lost: LostSeries) -> None:
    """Record a series whose files were all refused at discovery as a ``failed`` case.

    It gets a case folder (manifest + qc.json, no paths: the reason quotes header values), so
    ``index.csv`` lists it and the job exits 1 instead of reporting 0 cases with exit 0.
    """
    t0 = time.perf_counter()
    reason = safe_text(lost.reason)
    result = CaseResult(lost.case_id, "failed", reason, loader_findings=[Finding(
        "all_files_skipped", "error", reason, details={"n_skipped": lost.n_files})])
    provenance = job.provenance([], [], "", {"modality": lost.modality,
                                             "n_files_refused": lost.n_files}, t0)
    try:
        write = job.write(result, provenance)
    except Exception as exc:
        if (stop := _job_level(exc, job.output)) is not None:
            raise JobError(f"output folder {job.output}: {stop.strerror or stop} "
                           f"(stopped at case {lost.case_id}; a rerun resumes)") from exc
        raise
    reason = (write.manifest or {}).get("reason", reason)
    job.rows.append((lost.case_id, "failed", reason, round(time.perf_counter() - t0, 3)))
    log.warning("case %s failed: %s", lost.case_id, reason)


def _load(job: _Job, series: Any, input_hash: str, timings: dict[str, float]) -> Volume:
    """The case's volume: the one loaded ahead (:class:`Prefetcher`) when valid, else loaded.

    ``timings["load"]`` is the load's own seconds (in the background when loaded ahead; then
    ``timings["load_wait"]`` is what this case still waited for it). Then the load of the next
    case starts, so it overlaps this case's analysis and writing; a load error is raised the
    same either way.
    """
    t = time.perf_counter()
    try:
        ahead = job.prefetch.take(series, input_hash) if job.prefetch else None
        if ahead is not None:
            volume, timings["load"] = ahead
            timings["load_wait"] = round(time.perf_counter() - t, 4)
            return volume
        preload = None
        if job.be.name == "cpu":  # the modules of the CPU path (the GPU's are others)
            from medscan.dicom.pixels import needs_containment

            if needs_containment(series):  # decoded by worker processes: import meanwhile
                preload = preload_modules()
        try:
            volume = job.load(series)
        finally:
            if preload is not None:  # done by now, usually; no import runs beside the case's
                preload.join()
        timings["load"] = round(time.perf_counter() - t, 4)
        return volume
    finally:
        if job.prefetch:
            job.prefetch.start_after(series.case_id)


def _write_case(job: _Job, series: Any, refs: FileRefs, inputs: list[dict[str, Any]],
                input_hash: str, t0: float) -> tuple[str, str]:
    """Load, analyse and commit one case; returns its status and reason."""
    from medscan.dicom import SeriesError

    # series_block holds no geometry: after resampling the source's is not the written grid's,
    # which volume.nii.gz / labels.nii.gz carry in their headers
    series_dict = series_block(series.case_id, series.patient_id, {
        **series.metadata, "modality": series.modality, "n_slices": series.n_slices,
        "transfer_syntax": series.transfer_syntax_name,
        "transfer_syntax_uid": series.transfer_syntax}, bool(job.cfg.get("free_text")))
    provenance = job.provenance(series.files, inputs, input_hash, series_dict, t0)
    timings: dict[str, float] = {}
    try:
        volume = _load(job, series, input_hash, timings)
        volume.findings = refs.findings(volume.findings)
        volume.metadata = series_metadata(volume.metadata, bool(job.cfg.get("free_text")))
        result = analyse(volume, job.options, job.be, defer_preview=True)
        result.timings_s = {**timings, **result.timings_s}
    except SeriesError as exc:
        result = CaseResult(series.case_id, "failed", f"cannot load the series: {exc}",
                            loader_findings=refs.findings(series.findings), timings_s=timings)
    except Exception as exc:
        if _job_level(exc, job.output) is not None:
            raise
        log.error("case %s failed:\n%s", series.case_id, _traceback(exc, refs))
        result = CaseResult(series.case_id, "failed", f"{type(exc).__name__}: {exc}",
                            timings_s=timings)
    try:
        write = job.write(result, provenance)
    except Exception as exc:  # a file of the case could not be made: record the failure
        if _job_level(exc, job.output) is not None:
            raise
        log.error("case %s: writing failed:\n%s", series.case_id, _traceback(exc, refs))
        result = CaseResult(series.case_id, "failed", f"{type(exc).__name__}: {exc}",
                            loader_findings=result.all_loader_findings(),
                            timings_s=result.timings_s)
        write = job.write(result, provenance)
    manifest = write.manifest or {}
    if write.kept:
        return "failed", (f"{manifest.get('reason', '')} (not written: the existing ok case of "
                          "the same inputs was kept)")
    return manifest.get("status", "failed"), manifest.get("reason", "")


def _scratch(cfg: dict[str, Any]) -> Path | None:
    """The ``scratch`` folder (``$VAR`` expanded, e.g. ``scratch=$TMPDIR``), None when unset."""
    value = cfg.get("scratch")
    if not value:
        return None
    return Path(os.path.expandvars(str(value))).expanduser()


def run_segment(cfg: dict[str, Any]) -> int:
    """Run the batch described by ``cfg`` (the resolved ``conf/segment.yaml``).

    Returns
    -------
    int
        0 when no case failed, 1 when one did, 2 for a job-level error (bad input path, output
        folder not writable or full, backend unavailable, bad config, no id secret) -- with a
        one-line message on stderr naming the path and the reason.
    """
    try:
        return _run_segment(cfg)
    except JobError as exc:
        return _error(str(exc))


def _run_segment(cfg: dict[str, Any]) -> int:
    # A log handler that cannot write (disk full) must not print tracebacks between the
    # job's own messages; the job reports output errors itself (one line, exit 2).
    logging.raiseExceptions = False
    from medscan.dicom import discover

    be, options, fingerprint = check_job(cfg)
    source = Path(cfg["input"]) if cfg.get("input") else sample_path()
    output = Path(cfg["output"])
    job = _Job(cfg, source, output, options, be, fingerprint)

    before = rerun.begin(source, cfg.get("salt"))  # the inputs' state before any is read
    found = discover(source, salt=cfg.get("salt"), progress=bool(cfg.get("progress")))
    warnings = []
    if found.skipped:  # named on the terminal (relative paths); the log in DIR holds no paths
        warnings.append(f"{len(found.skipped)} file(s) skipped by the loader")
    for other in found.other_series:  # localizers, other modalities, stray files: not cases,
        why = next((f.message for f in other.findings  # but never dropped without a word
                    if f.code in ("non_volume", "stray_files", "no_pixel_data")),
                   f"modality {other.modality} is not loaded by segment")
        warnings.append(f"series {other.case_id} ({other.modality}, {other.n_slices} file(s)) "
                        f"not loaded: {why}")
    for line in warnings:
        log.warning("%s", line)
    by_id: dict[str, Any] = {s.case_id: s for s in found.series}
    for lost in found.lost_series:  # all files refused: a failed case, never silently dropped
        by_id.setdefault(lost.case_id, lost)
    try:
        mine = select_shard(list(by_id), int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1)))
    except ValueError as exc:
        return _error(str(exc))
    log.info("%d CT series found; %d in shard %s/%s", len(by_id), len(mine),
             cfg.get("shard", 0), cfg.get("num_shards", 1))

    # the next case's load overlaps the current case's compute (first pass only: a busy case
    # is usually current once its lock is free)
    job.prefetch = Prefetcher([by_id[c] for c in mine], job.will_process, job.load,
                              enabled=_prefetch_enabled(cfg))
    progress = _progress(bool(cfg.get("progress")))
    with progress, contextlib.closing(job.prefetch), contextlib.closing(CaseMemory()) as memory:
        task = progress.add_task("segment", total=len(mine))
        busy = []
        # First pass: cases another run is writing right now are left for the second pass.
        for case_id in mine:
            progress.update(task, description=f"segment {case_id}")
            memory.before_case()  # the previous case's cycles collected, its pages given back
            if _case(job, by_id[case_id], blocking=False):
                progress.advance(task)
            else:
                busy.append(case_id)
            job.prefetch.finished(case_id)
        job.prefetch.close()
        for case_id in busy:  # wait for the other run; usually it has finished the case
            progress.update(task, description=f"segment {case_id} (after another run)")
            memory.before_case()
            _case(job, by_id[case_id], blocking=True)
            progress.advance(task)

    try:
        rebuild_index(output)
    except OSError as exc:
        raise JobError(f"output folder {output}: cannot write index.csv: "
                       f"{exc.strerror or exc}") from exc
    _summary(job.rows, found.skipped, output, source)
    code = 1 if any(r[1] in ("failed", "stale") for r in job.rows) else 0
    # a rerun with nothing changed is answered from this record (medscan.rerun)
    rerun.finish(before, source, output, cfg.get("salt"), job.rows, found.skipped, warnings,
                 code)
    return code


def _prefetch_enabled(cfg: dict[str, Any]) -> bool:
    """``prefetch`` of the config; the packaged ``conf/segment.yaml``'s value when absent."""
    value = cfg.get("prefetch")
    if value is None:
        value = segment_defaults("prefetch")
    return bool(value)


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled, transient=False,
    )


def _summary(rows: list[tuple[str, str, str, float]], skipped: list[Any], output: Path,
             source: Path) -> None:
    """The job's summary on stderr (:func:`medscan.summary.print_summary`), paths relative."""
    from medscan.summary import print_summary

    print_summary(rows, [(relative_to_root(item.path, source), safe_text(str(item.reason)))
                         for item in skipped], output)
