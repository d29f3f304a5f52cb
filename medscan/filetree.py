"""Files of a DICOM folder tree: the walk, and the record of a file that is not loaded.

Standard library only (no pydicom, no NumPy): the no-op rerun check (:mod:`medscan.rerun`)
walks the input tree exactly as :func:`medscan.dicom.discover` does without importing the
DICOM stack.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def printable_path(path: str | os.PathLike[str]) -> str:
    r"""``path`` as text that is valid Unicode for any POSIX file name.

    File names are bytes; Python maps undecodable bytes to lone surrogates (PEP 383), which
    cannot be written as UTF-8. Here the bytes (``os.fsencode``) are decoded as UTF-8 and any
    invalid byte is shown as ``\xNN`` (e.g. ``scan\xe9-19``), so JSON, CSV and terminal
    output never hold a lone surrogate.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class SkippedFile:
    """A file that is not part of any image series.

    Parameters
    ----------
    path : Path
        The file.
    reason : str
        Why it was skipped (human readable).
    series_uid : str
        SeriesInstanceUID when the header was read but the file was refused (truncated pixel
        data, header sizes that lie), else empty: such a file is a lost slice of that series,
        not just a stray file (:func:`medscan.dicom.discover` reports the series).
    modality : str
        Its Modality, when ``series_uid`` is set.
    """

    path: Path
    reason: str
    series_uid: str = ""
    modality: str = ""

    def to_dict(self) -> dict[str, str]:
        """Return a JSON-serialisable dict."""
        return {"path": printable_path(self.path), "reason": self.reason}


def iter_files(
    root: str | os.PathLike[str], errors: list[SkippedFile] | None = None
) -> Iterator[Path]:
    """Yield every regular file under ``root`` (or ``root`` itself), in sorted order.

    Hidden files and folders (name starting with ``.``) are walked like any other: DICOM archives
    give dot-names no meaning, and skipping them silently dropped whole series (a file that is
    not DICOM is listed as skipped with its reason anyway). Symlinked folders are followed
    (archives are often trees of links; not following them dropped whole series with "0 CT
    series found", exit 0), each real folder once (a link to an ancestor cannot loop), and a
    file reached through several links is yielded once (same real path: the same bytes).

    Parameters
    ----------
    root : str or PathLike
        Folder or file.
    errors : list of SkippedFile, optional
        Receives every folder that could not be listed (no permission, vanished, I/O error)
        with the reason, so that an unreadable folder is reported, never silently skipped.
    """
    root = Path(root)
    if root.is_file():
        yield root
        return

    def on_error(exc: OSError) -> None:
        if errors is not None:
            where = Path(exc.filename) if exc.filename else root
            errors.append(SkippedFile(where, f"unreadable folder: {exc.strerror or exc}"))

    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a second link to a folder already walked (or a loop)
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            key = os.path.realpath(path)
            if key not in seen_files:
                seen_files.add(key)
                yield path


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8 (lone surrogates from undecodable bytes become U+FFFD)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def relative_to_root(path: str | Path, root: str | Path) -> str:
    """``path`` relative to the input ``root`` for terminal messages (else its name only)."""
    p, r = Path(path), Path(root)
    base = r if r.is_dir() else r.parent
    for a, b in ((p, base), (p.resolve(), base.resolve())):
        try:
            return safe_text(str(a.relative_to(b)))
        except ValueError:
            continue
    return safe_text(p.name)
