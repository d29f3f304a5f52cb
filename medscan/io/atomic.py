"""Atomic file writers: write to a temporary name in the same folder, then ``os.replace``.

A reader (or a killed writer) never sees a half-written file: the final name appears only
when the content is complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same folder).

    Parameters
    ----------
    path : str or Path
        Final file name.
    write : callable
        Writes the complete file at the path it is given (the suffix of ``path`` is kept so
        that format-sniffing writers such as nibabel work).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix="".join(path.suffixes) or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data``."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` (line endings as given, never translated)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8", newline=""))


def write_csv(
    path: str | Path,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    lineterminator: str = "\r\n",
) -> Path:
    r"""Atomically write ``rows`` as CSV with the header ``columns``.

    Keys not in ``columns`` are ignored; missing keys and ``None`` are written as empty cells.
    ``lineterminator`` defaults to the csv module's (RFC 4180) ``"\r\n"``.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", restval="",
                            lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, paths and tuples to JSON types (recursively)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (numpy values converted)."""
    return write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
