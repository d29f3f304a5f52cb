"""Batch mechanics shared by jobs that write one folder per case.

* :func:`select_shard` -- deterministic, disjoint, covering split of case ids over shards
  (Slurm arrays): case ``c`` belongs to shard ``int(sha256(c)[:8], 16) % num_shards``.
* :func:`hash_inputs`, :func:`config_hash` -- what decides whether a case must be redone.
* :func:`case_is_current` -- a rerun skips a case whose manifest is ``ok`` with the same input
  and config hashes.
* :func:`atomic_case_dir` -- a case is written in ``DIR/.tmp-<case_id>-<random>/`` and renamed
  to ``DIR/<case_id>`` only when complete (an old folder is renamed aside first, then deleted).
* :func:`rebuild_index` -- ``DIR/index.csv`` rebuilt from every ``DIR/*/manifest.json`` under an
  exclusive ``fcntl.flock`` on ``DIR/.index.lock``, written to a temporary file and renamed.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medscan.io import INDEX, INDEX_COLUMNS, METRICS, iter_case_dirs, read_json, write_text

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
LOCK_NAME = ".index.lock"


def shard_of(case_id: str, num_shards: int) -> int:
    """Shard index of ``case_id`` among ``num_shards``."""
    return int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16) % num_shards


def select_shard(case_ids: Iterable[str], shard: int, num_shards: int) -> list[str]:
    """The case ids of shard ``shard`` (0-based) out of ``num_shards``, in input order.

    Raises
    ------
    ValueError
        When ``num_shards < 1`` or ``shard`` is not in ``0..num_shards-1``.
    """
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard} num_shards={num_shards}: need 0 <= shard < num_shards")
    return [c for c in case_ids if shard_of(c, num_shards) == shard]


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


def config_hash(config: Any) -> str:
    """SHA-256 of a JSON-serialisable config (keys sorted)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def case_is_current(case_dir: str | Path, input_hash: str, cfg_hash: str) -> bool:
    """True when ``case_dir`` holds an ``ok`` case made from the same inputs and config."""
    try:
        manifest = read_json(Path(case_dir) / "manifest.json")
    except (OSError, ValueError):
        return False
    return (
        manifest.get("status") == "ok"
        and manifest.get("input_hash") == input_hash
        and manifest.get("config_hash") == cfg_hash
    )


def remove_stale(output: str | Path, case_id: str) -> list[Path]:
    """Delete leftovers of an interrupted run for ``case_id`` (``.tmp-*`` / ``.old-*``).

    Only the shard that owns a case writes it, so a leftover for a case this run is about to
    handle is dead.
    """
    removed = []
    root = Path(output)
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for p in root.glob(f"{prefix}{case_id}-*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_case_dir(output: str | Path, case_id: str) -> Iterator[Path]:
    """Yield a temporary folder; on normal exit it becomes ``output/case_id``.

    On an exception the temporary folder is deleted and the old case folder (if any) is left
    untouched.
    """
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{TMP_PREFIX}{case_id}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / case_id
    old = None
    if final.exists():
        old = root / f"{OLD_PREFIX}{case_id}-{secrets.token_hex(4)}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def rebuild_index(output: str | Path) -> Path:
    """Rewrite ``output/index.csv`` from every case folder's manifest and metrics.

    Holds an exclusive ``flock`` on ``output/.index.lock`` while reading and writing, so
    concurrent shards writing into one folder never interleave; the file is replaced
    atomically.
    """
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
            writer.writeheader()
            for case in iter_case_dirs(root):
                try:
                    manifest = read_json(case / "manifest.json")
                except (OSError, ValueError):
                    continue
                metrics: dict[str, Any] = {}
                if (case / METRICS).is_file():
                    with contextlib.suppress(OSError, ValueError):
                        metrics = read_json(case / METRICS)
                row = {k: _fmt(metrics.get(k)) for k in INDEX_COLUMNS}
                row["case_id"] = manifest.get("case_id", case.name)
                row["status"] = manifest.get("status", "")
                row["reason"] = manifest.get("reason", "")
                row["seconds"] = _fmt(manifest.get("seconds"))
                writer.writerow(row)
            write_text(root / INDEX, buf.getvalue())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root / INDEX
