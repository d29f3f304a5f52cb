"""Batch mechanics shared by jobs that write one folder per case.

* :func:`select_shard` -- deterministic, disjoint, covering split of case ids over shards
  (Slurm arrays): case ``c`` belongs to shard ``int(sha256(c)[:8], 16) % num_shards``.
* :func:`hash_series`, :func:`config_hash` (:mod:`medscan.hashing`) -- what decides whether a
  case must be redone; :func:`case_is_current` -- a rerun skips a case whose manifest is ``ok``
  with the same input and config hashes.
* :func:`case_lock` (a per-case ``flock``) lets one writer at a time handle a case; a waiting
  run names the holder (:func:`lock_holder`).
* Re-exported from :mod:`medscan.io` (where they live, so that the one case writer
  :func:`medscan.io.case.write_case` needs nothing above ``medscan.io``): :func:`case_writer`,
  :func:`atomic_case_dir`, :func:`remove_stale`, :class:`Lease` (:mod:`medscan.io.casedir`) and
  :func:`rebuild_index` (:mod:`medscan.io.case`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from medscan.hashing import (  # noqa: F401  (re-exported: the batch API)
    config_hash,
    hash_inputs,
    hash_series,
    sha256_file,
)
from medscan.io.case import read_manifest, rebuild_index  # noqa: F401  (re-exported)
from medscan.io.casedir import (  # noqa: F401  (re-exported)
    LEASE_PREFIX,
    LEASE_S,
    OLD_PREFIX,
    TMP_PREFIX,
    CaseWrite,
    Lease,
    _host,
    _start_ticks,
    atomic_case_dir,
    case_writer,
    is_stale,
    remove_stale,
)

LOCK_DIR = ".locks"


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


def case_is_current(case_dir: str | Path, input_hash: str, cfg_hash: str) -> bool:
    """True when ``case_dir`` holds an ``ok`` case made from the same inputs and config.

    Every file the manifest names (its ``meshes`` paths) must still be there: a case with a
    deleted mesh is redone, not reported current.
    """
    try:
        manifest = read_manifest(case_dir)
    except (OSError, ValueError):
        return False
    named = [m.get("path") for m in manifest.get("meshes") or [] if isinstance(m, dict)]
    return (
        manifest.get("status") == "ok"
        and manifest.get("input_hash") == input_hash
        and manifest.get("config_hash") == cfg_hash
        and all(isinstance(p, str) and (Path(case_dir) / p).is_file() for p in named)
    )


def lock_holder(output: str | Path, case_id: str, lease_s: float = LEASE_S) -> str:
    """Who holds the lock of ``case_id``, for a waiting run's message (no paths, no identity).

    The holder's host and pid come from the lock file (written by :func:`case_lock` once the
    lock is taken); the lease end is the newest ``.lease-<case_id>-*.json`` mtime plus
    ``lease_s`` (renewed while the holder works, so a paused or hung holder's lease runs out).

    Returns
    -------
    str
        E.g. ``"host node12, pid 4242; its lease runs until 2026-11-29T16:40:05Z"``.
    """
    root = Path(output)
    try:
        data = json.loads((root / LOCK_DIR / f"{case_id}.lock").read_text() or "{}")
        who = f"host {data['host']}, pid {data['pid']}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "holder not recorded yet"
    mtimes = []
    for lease_file in root.glob(f"{LEASE_PREFIX}{case_id}-*.json"):
        with contextlib.suppress(OSError):
            mtimes.append(lease_file.stat().st_mtime)
    if not mtimes:
        return f"{who}; no lease yet (it has not started writing)"
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(mtimes) + lease_s))
    expired = " (expired: the holder is paused or hung)" if max(mtimes) + lease_s < time.time() \
        else ""
    return f"{who}; its lease runs until {until}{expired}"


def lock_busy(output: str | Path, case_id: str, lease_s: float = LEASE_S) -> bool:
    """Whether another run seems to be handling ``case_id`` right now, without taking its lock.

    For guesses only (:mod:`medscan.ct.prefetch` decides which case to decode ahead): trying
    the ``flock`` would itself make a concurrent run's non-blocking :func:`case_lock` fail.
    True when another process of this host holds the lock file's ``flock`` (``/proc/locks``,
    Linux; a lock held from another host is not seen there; this process's own lock means
    this run is handling the case) or a lease of the case was renewed within ``lease_s``
    (another run is writing it, on any host).
    """
    root = Path(output)
    now = time.time()
    for lease_file in root.glob(f"{LEASE_PREFIX}{case_id}-*.json"):
        with contextlib.suppress(OSError):
            if lease_file.stat().st_mtime + lease_s > now:
                return True
    try:
        st = (root / LOCK_DIR / f"{case_id}.lock").stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    # /proc/locks rows: "1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF", the
    # device numbers in hex (fs/locks.c lock_get_status)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    me = str(os.getpid())
    return any(len(f := row.split()) >= 6 and f[1] == "FLOCK" and f[5] == key and f[4] != me
               for row in table.splitlines())


@contextlib.contextmanager
def case_lock(output: str | Path, case_id: str, blocking: bool = True,
              on_wait: Callable[[str], None] | None = None,
              lease_s: float = LEASE_S) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``DIR/.locks/<case_id>.lock`` while a case is written.

    Yields True when the lock is held, False (``blocking=False``) when another process holds
    it. The kernel releases the lock when its holder dies, so a crashed run never blocks others.
    The holder writes its host and pid into the lock file; a blocking call that has to wait
    calls ``on_wait`` once with :func:`lock_holder`'s text before it blocks (a paused holder
    keeps the lock: the operator sees whom the run waits for instead of a silent hang).
    """
    folder = Path(output) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{case_id}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                yield False
                return
            if on_wait is not None:
                on_wait(lock_holder(output, case_id, lease_s))
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.truncate(0)
            fh.write(json.dumps({"host": _host(), "pid": os.getpid()}))
            fh.flush()
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
