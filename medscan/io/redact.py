"""Keep archive paths and free-text DICOM fields out of what is written into an output folder.

The output folder is what gets shared; the archive's folder names often carry identity (one
folder per PatientID, as TCIA lays data out). So files written there refer to input files by
position in the series and content hash (:class:`FileRefs`), never by path, and free-text DICOM
fields (SeriesDescription, ...) are dropped unless the job's ``free_text`` option opts in
(:func:`series_metadata`). Messages on the operator's terminal may name files relative to the
input root (:func:`relative_to_root`): the operator holds the archive anyway.

Own code rather than a library: what counts as a path here is "any string the loader got from
the file system", which only this program knows; a generic scrubber cannot know it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medscan.filetree import relative_to_root, safe_text  # noqa: F401  (re-exported)
from medscan.volume import Finding

#: Series metadata keys kept in outputs by default: coded values and device facts, no free text.
SAFE_METADATA = frozenset({
    "modality", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel",
    "BodyPartExamined", "KVP", "SliceThickness", "ImageType", "PhotometricInterpretation",
    "n_slices", "transfer_syntax", "transfer_syntax_uid", "spacing_mm", "padding_voxels",
    "air_hu",
})

#: An absolute POSIX path token (after start, space, quote, bracket or ``=``).
_ABS_PATH = re.compile(r"(?:^|(?<=[\s'\"(\[=]))/[^\s'\"\]),;]+")
#: The input root (marked by a NUL) and whatever path follows it.
_UNDER_ROOT = re.compile(r"\x00[^\s'\"\]),;]*")
#: Digits of a content hash kept in a reference (64 bits).
HASH_DIGITS = 16
#: A reference made by :meth:`FileRefs.ref` (so a second pass leaves it as it is).
_REF = re.compile(rf"(?:slice \d+|file) (?:sha256:[0-9a-f]{{{HASH_DIGITS}}}|\(unreadable\))")


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


class FileRefs:
    """Maps input file paths to path-free references ``"slice 12 sha256:<16 hex>"``.

    Parameters
    ----------
    files : iterable of str or Path
        The series' files in slice order (positions are 0-based indices into this list).
    root : str or Path, optional
        The job's input root; its absolute path is also scrubbed from text.
    hashes : dict, optional
        Known SHA-256 hex digests keyed by ``str(path)`` (saves reading files twice).
    """

    def __init__(self, files: Iterable[str | Path], root: str | Path | None = None,
                 hashes: dict[str, str] | None = None) -> None:
        self.files = [str(f) for f in files]
        self.position = {f: i for i, f in enumerate(self.files)}
        self.hashes = dict(hashes or {})
        self.roots = []
        if root is not None:
            for r in {str(Path(root)), str(Path(root).resolve())}:
                self.roots.append(r)

    def sha256(self, path: str) -> str | None:
        """SHA-256 of ``path`` (cached)."""
        if path not in self.hashes:
            digest = _sha256(Path(path))
            if digest is None:
                return None
            self.hashes[path] = digest
        return self.hashes[path]

    def ref(self, path: str | Path) -> str:
        """``"slice <i> sha256:<hex>"`` for a series file, ``"file sha256:<hex>"`` otherwise.

        A reference is returned unchanged: findings pass through :meth:`findings` once in the
        job (so its log is path-free) and again in :func:`medscan.io.case.write_case` (for
        every caller); the second pass must not hash the reference text as a file name.
        """
        path = str(path)
        if _REF.fullmatch(path):
            return path
        digest = self.sha256(path)
        tail = f"sha256:{digest[:HASH_DIGITS]}" if digest else "(unreadable)"
        if path in self.position:
            return f"slice {self.position[path]} {tail}"
        return f"file {tail}"

    def _forms(self) -> list[tuple[str, str]]:
        r"""(How a known file may be written in a message, its path), longest first.

        Forms: the path, its printable form (undecodable bytes as ``\xNN``), relative to the
        root, and the bare file name when it is distinctive (5+ characters, not all digits).
        """
        forms: dict[str, str] = {}
        for path in set(self.files) | set(self.hashes):
            p = Path(path)
            candidates = [path, _printable(path), p.name, _printable(p.name)]
            for root in self.roots:
                with contextlib.suppress(ValueError):
                    candidates.append(str(p.relative_to(root)))
            for c in candidates:
                if c == path or (len(c) >= 5 and not c.isdigit()):
                    forms.setdefault(c, path)
        return sorted(forms.items(), key=lambda kv: len(kv[0]), reverse=True)

    def text(self, text: str) -> str:
        """``text`` with known paths replaced by references, other paths by ``<path>``.

        Other paths: absolute ones, and any starting with the input root as given.
        """
        for form, path in self._forms():
            if form in text:
                text = text.replace(form, self.ref(path))
        text = _ABS_PATH.sub("<path>", text)
        for root in sorted(self.roots, key=len, reverse=True):
            text = text.replace(root, "\x00")
        return _UNDER_ROOT.sub("<path>", text)

    def value(self, value: Any) -> Any:
        """Scrub strings anywhere inside a JSON-like value."""
        if isinstance(value, str | Path):
            text = str(value)
            return self.ref(text) if text in self.position or text in self.hashes \
                else self.text(text)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def finding(self, finding: Finding) -> Finding:
        """A copy of ``finding`` that names files by reference."""
        return Finding(finding.code, finding.severity, self.text(finding.message),
                       [self.ref(f) for f in finding.files], self.value(finding.details))

    def findings(self, findings: Iterable[Finding]) -> list[Finding]:
        """:meth:`finding` over a list."""
        return [self.finding(f) for f in findings]


def series_metadata(metadata: dict[str, Any], free_text: bool = False) -> dict[str, Any]:
    """Series metadata for outputs: only :data:`SAFE_METADATA` keys unless ``free_text``.

    Free-text DICOM fields (SeriesDescription, ProtocolName, ...) are written by people and
    may hold a name; they stay out of outputs unless the job's ``free_text=true`` opts in. Values
    are made valid UTF-8 either way (a non-UTF-8 byte becomes U+FFFD).
    """
    keep = metadata if free_text else {k: v for k, v in metadata.items() if k in SAFE_METADATA}
    return {k: safe_text(v) if isinstance(v, str) else v for k, v in keep.items()}


#: Top-level facts of a manifest's ``series`` block (beside ``case_id``, ``patient_id``).
SERIES_KEYS = ("modality", "n_slices", "transfer_syntax", "transfer_syntax_uid")
#: Entries the loader adds to ``Volume.metadata`` about the loaded grid (not series metadata).
LOADED_KEYS = frozenset({"n_slices", "transfer_syntax", "transfer_syntax_uid", "padding_voxels",
                         "air_hu", "spacing_mm"})


def series_block(case_id: str, patient_id: str, metadata: dict[str, Any],
                 free_text: bool = False) -> dict[str, Any]:
    """The manifest's ``series`` block: the same fields from the job, the API and napari.

    Parameters
    ----------
    case_id, patient_id : str
        The pseudonymous ids (keyed HMACs, :mod:`medscan.dicom.identity`); never identity.
    metadata : dict
        Series metadata with the :data:`SERIES_KEYS` among it (``Volume.metadata`` as the
        loader fills it, or a ``SeriesInfo``'s metadata merged with its attributes).
    free_text : bool
        Keep free-text DICOM fields (:func:`series_metadata`).

    Returns
    -------
    dict
        ``case_id, patient_id, modality, n_slices, transfer_syntax, transfer_syntax_uid,
        metadata`` (coded values only unless ``free_text``; no paths, no geometry: the written
        grid is the NIfTI header's).
    """
    rest = {k: v for k, v in metadata.items() if k not in LOADED_KEYS}
    return {"case_id": case_id, "patient_id": patient_id,
            **{k: metadata.get(k) for k in SERIES_KEYS},
            "metadata": series_metadata(rest, free_text)}


def _printable(path: str) -> str:
    r"""File name bytes as text, undecodable bytes as ``\xNN`` (as the loader prints them)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def relative_paths(value: Any, root: str | Path | None) -> Any:
    """``value`` (a JSON-like config) with every absolute path made relative to ``root``.

    A string that is an absolute path under the input root becomes that path relative to it
    (``"."`` for the root itself); any other absolute path becomes ``"<path>"``: a stored config
    never holds an archive's absolute path (folder names can carry identity).
    """
    if isinstance(value, dict):
        return {k: relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [relative_paths(v, root) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.startswith(("/", "~")):
        return value
    p = Path(value).expanduser()
    if root is not None:
        base = Path(root)
        for a, b in ((p, base), (p.resolve(), base.resolve())):
            with contextlib.suppress(ValueError):
                return safe_text(str(a.relative_to(b)))
    return "<path>"
