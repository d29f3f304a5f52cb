"""The shape of one analysed case: :class:`CaseResult` (what was computed) and :class:`Provenance`.

``medscan.ct.analyse.analyse`` returns a :class:`CaseResult` without touching the disk;
``medscan.io.case.write_case`` writes it, with a :class:`Provenance` (where it came from, with
which config), as one case folder; ``medscan.io.case.read_case`` reads such a folder back into a
:class:`CaseResult`. The segment job, the napari widget and Python users go through these three.

This module imports no ``medscan.ct`` and no writer of ``medscan.io``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from medscan.hashing import config_hash, hash_series
from medscan.volume import Finding, LabelMap, Volume

#: Packages whose versions shape the outputs (recorded in every manifest).
PACKAGES = ("medscan", "numpy", "scipy", "scikit-image", "connected-components-3d", "trimesh",
            "fast-simplification", "nibabel", "isal", "pydicom", "matplotlib")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the outputs (:data:`PACKAGES`)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the manifest's ``created``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class CaseResult:
    """Everything computed for one case, in memory.

    Parameters
    ----------
    case_id : str
        Pseudonymous case id (the folder name).
    status : str
        ``"ok"`` or ``"failed"``.
    reason : str
        Why it failed (empty when ok).
    volume : Volume or None
        The HU volume (None when loading failed, or read back without arrays).
    labels : LabelMap or None
        The label map on the volume's grid, with its label table.
    metrics : dict
        The content of ``metrics.json`` (JSON-safe).
    surfaces : dict of str to trimesh.Trimesh
        Meshes per tissue name, vertices in LPS mm.
    findings : list of Finding
        Segmentation and measurement findings (``qc.json``'s ``segmentation_findings``).
    loader_findings : list of Finding
        Loader findings not held by ``volume.findings`` (a series that could not be loaded, or
        a case read back from disk). ``qc.json``'s ``loader_findings`` are
        ``volume.findings + loader_findings``.
    timings_s : dict of str to float
        Seconds per stage.
    preview_png : bytes or None
        The preview image (PNG bytes), when rendered (see :meth:`wait_preview`).
    pending_preview : object or None
        A preview still being drawn in a worker process
        (:class:`medscan.ct.analyse.PendingPreview`, ``analyse(..., defer_preview=True)``):
        :meth:`wait_preview` turns it into ``preview_png``.
    provenance : Provenance or None
        Set by ``read_case`` (the manifest's provenance fields).
    manifest : dict
        Set by ``read_case``: the manifest as stored.
    folder : Path or None
        Set by ``read_case``: the case folder.
    files : dict
        Set by ``read_case``: the files present, ``{"volume"|"labels"|"preview": Path}`` and
        ``"meshes": {tissue: {format: Path}}``.
    """

    case_id: str
    status: str = "ok"
    reason: str = ""
    volume: Volume | None = None
    labels: LabelMap | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    surfaces: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    loader_findings: list[Finding] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    preview_png: bytes | None = None
    provenance: Provenance | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    files: dict[str, Any] = field(default_factory=dict)
    pending_preview: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.status not in ("ok", "failed"):
            raise ValueError(f"status {self.status!r}: use 'ok' or 'failed'")

    def wait_preview(self) -> None:
        """Wait for a preview drawn in a worker process and set ``preview_png`` (else nothing).

        Adds ``timings_s["preview.worker"]`` (seconds from the request to the PNG).
        """
        pending = self.pending_preview
        if pending is not None:  # kept until done: an interrupted wait can still discard it
            self.preview_png = pending.result(self.timings_s)
            self.pending_preview = None

    def discard_preview(self) -> None:
        """Drop a preview still being drawn (its worker is killed): the case was not written."""
        pending, self.pending_preview = self.pending_preview, None
        if pending is not None:
            pending.discard()

    def fail(self, reason: str) -> None:
        """Mark the case failed, appending ``reason`` to an earlier one."""
        self.status = "failed"
        self.reason = f"{self.reason}; {reason}" if self.reason else reason

    def all_loader_findings(self) -> list[Finding]:
        """``volume.findings`` (when a volume is held) followed by :attr:`loader_findings`."""
        held = list(self.volume.findings) if self.volume is not None else []
        return held + list(self.loader_findings)


#: Config keys never written into an output folder, for every job (``segment``, ``measure``,
#: the napari widget, the Python API): input and output paths (archive and node-local folder or
#: file names can carry identity), the pseudonym secret (``salt``: only its fingerprint is
#: kept), the scratch folder, and ``medscan measure``'s input files. :class:`Provenance` drops
#: them from its config (construction and :meth:`Provenance.manifest_fields`): the one place.
PRIVATE_KEYS = frozenset({"input", "output", "salt", "scratch", "volume", "labels",
                          "label_table"})


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the :data:`PRIVATE_KEYS` (top level; values are left as they are).

    Absolute paths in the remaining values are made relative by
    :func:`medscan.io.redact.relative_paths` when the manifest is written.
    """
    return {k: v for k, v in dict(config or {}).items() if k not in PRIVATE_KEYS}


#: Provenance fields written into ``manifest.json``, in order.
MANIFEST_FIELDS = ("config", "config_hash", "inputs", "input_hash", "id_secret_fingerprint",
                   "versions", "backend", "series", "measured")


@dataclass
class Provenance:
    """Where a case came from and how it was made (the manifest's provenance fields).

    Parameters
    ----------
    config : dict
        The config recorded in the manifest. Its :data:`PRIVATE_KEYS` (input/output paths, the
        id secret) are dropped here, whoever builds the provenance; path values are made
        relative to the input root by ``write_case``.
    config_hash : str
        SHA-256 of the *case* config (``medscan.ct.analyse.case_config``): equal for the job and
        the napari widget with the same options, so either's case is current for the other.
    inputs : list of dict
        ``{"slice": i, "sha256": hex}`` per input file (no paths).
    input_hash : str
        :func:`medscan.hashing.hash_series` over the inputs ("" when they could not be read).
    id_secret_fingerprint : str
        Fingerprint of the pseudonym secret in effect (never the secret).
    versions : dict
        Python and package versions (:func:`versions`).
    backend : str
        Array backend name (``cpu``, ``gpu``).
    series : dict or None
        Source series description (written when set).
    created : str
        UTC time the case was written (filled by ``write_case`` when empty).
    seconds : float or None
        Wall time of the case (filled by ``write_case`` from ``clock_start`` when None).
    source_files : list of str
        Input file paths, in slice order: never written; ``write_case`` rewrites any mention
        of them in findings and reasons as ``slice <i> sha256:<hex>``.
    source_root : str or None
        The input root (never written; scrubbed from text like ``source_files``).
    clock_start : float or None
        ``time.perf_counter()`` when the case began (never written).
    measured : dict or None
        The last re-measurement of the case (``medscan measure``): ``{"created": UTC time,
        "by": "medscan measure", "config_hash": SHA-256 of the measure options, "versions":
        {...}}``; written when set. ``config_hash`` above stays the one of the ``segment``
        config, so that a re-measured case is still current for a ``segment`` rerun.
    """

    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    input_hash: str = ""
    id_secret_fingerprint: str = ""
    versions: dict[str, str] = field(default_factory=versions)
    backend: str = "cpu"
    series: dict[str, Any] | None = None
    created: str = ""
    seconds: float | None = None
    source_files: list[str] = field(default_factory=list, repr=False)
    source_root: str | None = field(default=None, repr=False)
    clock_start: float | None = field(default=None, repr=False)
    measured: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.config = public_config(self.config)

    @classmethod
    def for_files(
        cls,
        files: list[str] | list[Path],
        config: dict[str, Any],
        *,
        case_config: dict[str, Any] | None = None,
        root: str | Path | None = None,
        backend: str = "cpu",
        salt: str | None = None,
        series: dict[str, Any] | None = None,
        clock_start: float | None = None,
    ) -> Provenance:
        """Provenance of a case made from ``files`` (hashed here) with ``config``.

        Parameters
        ----------
        files : list of str or Path
            The series' files in slice order (missing files are left out of the hash: a volume
            made in memory has none).
        config : dict
            The config to record (its :data:`PRIVATE_KEYS` are dropped before hashing).
        case_config : dict, optional
            What :attr:`config_hash` covers (default: ``config``).
        root : str or Path, optional
            The input root.
        backend : str
            Backend name.
        salt : str, optional
            Explicit pseudonym secret (default: the one in effect); only its fingerprint is
            kept.
        series : dict, optional
            Source series description.
        clock_start : float, optional
            ``time.perf_counter()`` at the start of the case.

        Raises
        ------
        OSError
            When an existing input file cannot be read.
        medscan.dicom.identity.SecretError
            When no pseudonym secret is available.
        """
        from medscan.dicom.identity import secret_fingerprint

        present = [str(f) for f in files if Path(f).is_file()]
        inputs, input_hash = hash_series(present) if present else ([], "")
        config = public_config(config)
        return cls(
            config=config,
            config_hash=config_hash(
                config if case_config is None else public_config(case_config)),
            inputs=inputs, input_hash=input_hash,
            id_secret_fingerprint=secret_fingerprint(salt), backend=backend, series=series,
            source_files=present, source_root=None if root is None else str(root),
            clock_start=clock_start,
        )

    @classmethod
    def for_volume(
        cls,
        volume: Volume,
        config: dict[str, Any],
        *,
        free_text: bool = False,
        **kwargs: Any,
    ) -> Provenance:
        """:meth:`for_files` over ``volume.files`` with the manifest's ``series`` block.

        The block (:func:`medscan.io.redact.series_block`: pseudonymous ids, modality, slice
        count, transfer syntax, coded metadata) is the one ``medscan segment`` writes; a volume
        with no series metadata (read from NIfTI) gets none.

        Parameters
        ----------
        volume : Volume
            The loaded volume (``files``, ``case_id``, ``patient_id``, ``metadata``).
        config : dict
            The config to record (see :meth:`for_files`).
        free_text : bool
            Keep free-text DICOM fields in the block (the job's ``free_text``).
        **kwargs
            Passed to :meth:`for_files` (``case_config``, ``root``, ``backend``, ``salt``,
            ``clock_start``).
        """
        from medscan.io.redact import series_block

        series = (series_block(volume.case_id, volume.patient_id, volume.metadata, free_text)
                  if volume.metadata else None)
        return cls.for_files(list(volume.files), config, series=series, **kwargs)

    def manifest_fields(self) -> dict[str, Any]:
        """The fields written into ``manifest.json`` (``series``, ``measured`` only when set)."""
        out = {k: getattr(self, k) for k in MANIFEST_FIELDS}
        out["config"] = public_config(self.config)  # also when config was replaced later
        for optional in ("series", "measured"):
            if out[optional] is None:
                out.pop(optional)
        return out

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Provenance:
        """The provenance recorded in a manifest (inverse of :meth:`manifest_fields`)."""
        return cls(
            config=dict(manifest.get("config") or {}),
            config_hash=str(manifest.get("config_hash", "")),
            inputs=list(manifest.get("inputs") or []),
            input_hash=str(manifest.get("input_hash", "")),
            id_secret_fingerprint=str(manifest.get("id_secret_fingerprint", "")),
            versions=dict(manifest.get("versions") or {}),
            backend=str(manifest.get("backend", "")),
            series=manifest.get("series"),
            created=str(manifest.get("created", "")),
            seconds=manifest.get("seconds"),
            measured=manifest.get("measured"),
        )
