"""Content hashes that decide whether a case must be redone (inputs and config).

A leaf module (standard library only) so that the batch mechanics (:mod:`medscan.batch`), the
case provenance (:mod:`medscan.case`) and the napari widget hash the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_inputs(files: Iterable[str | Path], root: str | Path) -> tuple[dict[str, str], str]:
    """Per-file SHA-256 keyed by path relative to ``root``, and one hash over all of them.

    The combined hash covers the sorted ``(relpath, sha256)`` pairs, so it does not depend on
    where the input folder lives.
    """
    root = Path(root)
    base = root if root.is_dir() else root.parent
    by_bytes: dict[bytes, str] = {}
    for f in files:
        p = Path(f)
        try:
            rel = p.resolve().relative_to(base.resolve())
        except ValueError:
            rel = Path(p.name)
        # File names are bytes on POSIX (any byte but / and NUL): hash the bytes themselves,
        # never an encoding of the str (a Latin-1 name is not valid UTF-8).
        by_bytes[os.fsencode(rel)] = sha256_file(p)
    h = hashlib.sha256()
    for rel_bytes in sorted(by_bytes):
        h.update(rel_bytes + b"\0" + by_bytes[rel_bytes].encode() + b"\n")
    # Keys as valid Unicode text (undecodable bytes shown as \\xNN) for JSON manifests.
    hashes = {
        rel_bytes.decode("utf-8", "backslashreplace"): digest
        for rel_bytes, digest in by_bytes.items()
    }
    return hashes, h.hexdigest()


def hash_series(files: Iterable[str | Path]) -> tuple[list[dict[str, Any]], str]:
    """Per-slice SHA-256 in series order, and one hash over them (no paths: see below).

    Manifests name input files by position and content only: archive folder names can carry
    identity (one folder per PatientID) and outputs are shared.

    Parameters
    ----------
    files : iterable of str or Path
        The series' files in slice order.

    Returns
    -------
    inputs : list of dict
        ``{"slice": i, "sha256": hex}`` per file.
    combined : str
        SHA-256 over the ordered digests: changes when a file's bytes, the number of slices or
        their order change, not when the folder is moved or renamed.

    Raises
    ------
    OSError
        When a file cannot be read.
    """
    digests: dict[bytes, str] = {}  # frames of one multi-frame file: hash the file once
    inputs = []
    for i, f in enumerate(files):
        key = os.fsencode(f)
        if key not in digests:
            digests[key] = sha256_file(f)
        inputs.append({"slice": i, "sha256": digests[key]})
    h = hashlib.sha256()
    for item in inputs:
        h.update(f"{item['slice']}\0{item['sha256']}\n".encode())
    return inputs, h.hexdigest()


def config_hash(config: Any) -> str:
    """SHA-256 of a JSON-serialisable config (keys sorted)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


