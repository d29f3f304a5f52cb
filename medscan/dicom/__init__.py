"""DICOM CT loading: discover series in a folder tree, decode them into HU volumes, report QC.

>>> from medscan.dicom import discover, load, load_path
>>> found = discover("scans/")            # headers only
>>> volume = load(found.series[0])        # HU (z, y, x), affine index -> LPS mm
>>> volume = load_path("scans/one-series/")

See ``docs/dicom.md`` for the rules (grouping, ordering, padding, tilt, identity).
"""

from __future__ import annotations

import os

from medscan.dicom.discover import Discovery, discover, iter_files
from medscan.dicom.headers import SkippedFile, SliceHeader, read_header
from medscan.dicom.pixels import PADDING_HU, SeriesError, decode_file, load
from medscan.dicom.resample import regularize_stack
from medscan.dicom.series import SeriesInfo
from medscan.volume import AIR_HU, Volume

__all__ = [
    "AIR_HU",
    "PADDING_HU",
    "Discovery",
    "SeriesError",
    "SeriesInfo",
    "SkippedFile",
    "SliceHeader",
    "decode_file",
    "discover",
    "iter_files",
    "load",
    "load_path",
    "read_header",
    "regularize_stack",
]


def load_path(
    path: str | os.PathLike[str],
    *,
    salt: str | None = None,
    workers: int | None = None,
    uniform: bool = False,
    progress: bool = False,
    contain: bool | None = None,
) -> Volume:
    """Load the CT series under ``path`` (the first by case id when there are several).

    Parameters
    ----------
    path : str or PathLike
        A folder (walked recursively) or one DICOM file.
    salt : str, optional
        Salt of the pseudonymous ids.
    workers : int, optional
        Decoding threads (see :func:`load`).
    uniform : bool
        Resample unevenly spaced stacks to uniform spacing (see :func:`load`).
    progress : bool
        Progress bars (stderr) while reading headers of many files and decoding long series.
    contain : bool, optional
        Decode compressed pixel data in a worker process that may crash (see :func:`load`).

    Returns
    -------
    Volume

    Raises
    ------
    SeriesError
        When no CT series is found (the message lists why files were skipped) or it fails to load.
    FileNotFoundError
        When ``path`` does not exist.
    """
    found = discover(path, salt=salt, workers=None, progress=progress)
    if not found.series:
        why = "; ".join(f"{s.path.name}: {s.reason}" for s in found.skipped[:5])
        other = "; ".join(_not_loaded(s) for s in found.other_series[:5])
        raise SeriesError(
            f"{path}: no CT image series found"
            + (f"; {len(found.other_series)} other series not loaded: {other}" if other else "")
            + (f"; skipped {len(found.skipped)} file(s): {why}" if found.skipped else "")
        )
    return load(found.series[0], workers=workers, uniform=uniform, progress=progress,
                contain=contain)


def _not_loaded(series: SeriesInfo) -> str:
    """``"<modality>, <n> file(s): <why>"`` for a series :func:`discover` did not make a case."""
    why = next((f.message for f in series.findings
                if f.code in ("non_volume", "stray_files", "no_pixel_data")),
               f"modality {series.modality}")
    return f"{series.modality}, {series.n_slices} file(s): {why}"
