"""Batch mechanics shared by jobs that write one folder per case.

* :func:`select_shard` -- deterministic, disjoint, covering split of case ids over shards
  (Slurm arrays): case ``c`` belongs to shard ``int(sha256(c)[:8], 16) % num_shards``.
* :func:`hash_series`, :func:`config_hash` -- what decides whether a case must be redone.
* :func:`case_is_current` -- a rerun skips a case whose manifest is ``ok`` with the same input
  and config hashes.
* :func:`case_writer` / :func:`atomic_case_dir` -- a case is written in
  ``DIR/.tmp-<case_id>-<token>/`` and renamed to ``DIR/<case_id>`` only when complete (an old
  folder is renamed aside first, then deleted); a failure never replaces an ``ok`` case of the
  same inputs.
* Concurrent runs on one folder (Slurm shards, a rerun started twice): :func:`case_lock` (a
  per-case ``flock``) lets one writer at a time handle a case, and :func:`remove_stale` deletes
  only temporary folders whose :class:`Lease` (host, pid, pid start time, renewed mtime) proves
  the writer dead.
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
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medscan.io import (
    INDEX,
    INDEX_COLUMNS,
    METRICS,
    iter_case_dirs,
    read_json,
    write_json,
    write_text,
)
from medscan.io.gallery import write_gallery

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


#: A lease not renewed for this long belongs to a dead (or hung) writer (seconds). Writers renew
#: theirs every ``LEASE_S / 6``; a case taking longer than this is fine (the lease is renewed).
LEASE_S = 900.0
LEASE_PREFIX = ".lease-"
LOCK_DIR = ".locks"


def _host() -> str:
    return socket.gethostname()


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), to detect pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime) comes after the ")" that ends the command name (which may hold spaces)
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int, ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    now = _start_ticks(pid)
    return ticks is None or now is None or now == ticks


@dataclass
class Lease:
    """Who writes a temporary case folder: ``DIR/.lease-<case_id>-<token>.json``.

    A writer records its host, pid and the pid's start time before it creates
    ``DIR/.tmp-<case_id>-<token>/`` and renews the file's mtime while it works, so another run
    can tell a live writer's folders from a dead one's (see :func:`is_stale`).
    """

    path: Path
    host: str
    pid: int
    start_ticks: int | None

    @classmethod
    def read(cls, path: Path) -> Lease | None:
        """The lease at ``path``, or None when it is missing or unreadable."""
        try:
            data = read_json(path)
            return cls(path, str(data["host"]), int(data["pid"]), data.get("start_ticks"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def owner_dead(self, lease_s: float) -> bool:
        """True when the owner provably no longer works on the folder.

        Own process (a leftover of this very run), or on this host with its pid gone or reused,
        or (any host) the lease not renewed for ``lease_s`` seconds.
        """
        if self.host == _host():
            if self.pid == os.getpid() and self.start_ticks == _start_ticks(os.getpid()):
                return True
            if not _pid_alive(self.pid, self.start_ticks):
                return True
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return True
        return age > lease_s


def _token_of(name: str, case_id: str) -> str:
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        if name.startswith(f"{prefix}{case_id}-"):
            return name[len(prefix) + len(case_id) + 1 :]
    return ""


def _lease_path(root: Path, case_id: str, token: str) -> Path:
    return root / f"{LEASE_PREFIX}{case_id}-{token}.json"


def is_stale(folder: Path, case_id: str, lease_s: float = LEASE_S) -> bool:
    """True when a ``.tmp-``/``.old-`` folder of ``case_id`` is provably abandoned.

    Its lease says the owner is dead (:meth:`Lease.owner_dead`); a folder without a lease (made
    by an older medscan, or its lease lost) counts as abandoned once its mtime is older than
    ``lease_s``.
    """
    lease = Lease.read(_lease_path(folder.parent, case_id, _token_of(folder.name, case_id)))
    if lease is not None:
        return lease.owner_dead(lease_s)
    try:
        return time.time() - folder.stat().st_mtime > lease_s
    except OSError:
        return False  # vanished meanwhile: its owner finished


def remove_stale(output: str | Path, case_id: str, lease_s: float = LEASE_S) -> list[Path]:
    """Delete abandoned leftovers (``.tmp-*`` / ``.old-*`` and their leases) of ``case_id``.

    Only folders :func:`is_stale` proves abandoned are removed: another run writing the same
    case into the same folder (two shards, a rerun started twice) keeps its work.
    """
    removed = []
    root = Path(output)
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for p in root.glob(f"{prefix}{case_id}-*"):
            if is_stale(p, case_id, lease_s):
                shutil.rmtree(p, ignore_errors=True)
                _lease_path(root, case_id, _token_of(p.name, case_id)).unlink(missing_ok=True)
                removed.append(p)
    for lease_file in root.glob(f"{LEASE_PREFIX}{case_id}-*.json"):
        token = lease_file.name[len(LEASE_PREFIX) + len(case_id) + 1 : -len(".json")]
        orphan = not any((root / f"{pre}{case_id}-{token}").exists()
                         for pre in (TMP_PREFIX, OLD_PREFIX))
        lease = Lease.read(lease_file)
        if orphan and (lease is None or lease.owner_dead(lease_s)):
            lease_file.unlink(missing_ok=True)
    return removed


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


class _Renewer:
    """Renews a lease file's mtime from a daemon thread until stopped."""

    def __init__(self, path: Path, every_s: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(path, every_s), daemon=True)
        self._thread.start()

    def _run(self, path: Path, every_s: float) -> None:
        while not self._stop.wait(every_s):
            with contextlib.suppress(OSError):
                os.utime(path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class CaseWrite:
    """What :func:`case_writer` did: ``path`` is the temporary folder to fill.

    After the block, ``committed`` tells whether it became ``DIR/<case_id>``; ``kept`` is True
    when a failed result was not allowed to replace a finished ``ok`` case of the same inputs.
    """

    path: Path
    committed: bool = False
    kept: bool = False


def _keeps_existing(final: Path, new_manifest: Path) -> bool:
    """A failed result never replaces an ``ok`` case made from the same inputs."""
    try:
        new = read_json(new_manifest)
        old = read_json(final / "manifest.json")
    except (OSError, ValueError):
        return False
    if new.get("status") == "ok" or old.get("status") != "ok":
        return False
    # same inputs, or inputs that could not even be hashed (unreadable: cannot tell)
    return not new.get("input_hash") or old.get("input_hash") == new.get("input_hash")


@contextlib.contextmanager
def case_writer(output: str | Path, case_id: str, lease_s: float = LEASE_S,
                scratch: str | Path | None = None) -> Iterator[CaseWrite]:
    """Yield a :class:`CaseWrite` whose temporary folder becomes ``output/case_id`` on exit.

    With ``scratch`` (node-local disk, e.g. ``$TMPDIR`` on a cluster node) the case is built in
    ``scratch/.tmp-<case_id>-<token>/`` and, when complete, copied into
    ``DIR/.tmp-<case_id>-<token>/`` and renamed as without it: the many small writes of a
    case stay off the shared parallel file system, the commit stays one rename, and the lease
    in ``DIR`` covers the copy. The scratch folder is removed in every case.

    The folder is ``DIR/.tmp-<case_id>-<token>/`` with a :class:`Lease` renewed while the block
    runs. On normal exit the folder replaces the case (an old folder is renamed aside, then
    deleted), unless the new manifest is a failure and the existing case is ``ok`` for the same
    inputs (then the old case stays and ``kept`` is set). On an exception the temporary folder
    is deleted and the old case folder is left untouched. Callers that may race with other runs
    hold :func:`case_lock` around it.
    """
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    token = f"{secrets.token_hex(4)}"
    lease = _lease_path(root, case_id, token)
    write_json(lease, {"host": _host(), "pid": os.getpid(),
                       "start_ticks": _start_ticks(os.getpid()), "lease_s": lease_s})
    renewer = _Renewer(lease, max(lease_s / 6, 0.05))
    tmp = root / f"{TMP_PREFIX}{case_id}-{token}"
    build = Path(scratch) / tmp.name if scratch else tmp
    result = CaseWrite(build)
    try:
        try:
            build.parent.mkdir(parents=True, exist_ok=True)
            build.mkdir()
            yield result
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        final = root / case_id
        if final.exists() and _keeps_existing(final, build / "manifest.json"):
            shutil.rmtree(build, ignore_errors=True)
            result.kept = True
            return
        if build != tmp:  # node-local build: copy next to the case, then commit by rename
            try:
                shutil.copytree(build, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            finally:
                shutil.rmtree(build, ignore_errors=True)
        old = None
        if final.exists():
            old = root / f"{OLD_PREFIX}{case_id}-{token}"
            os.replace(final, old)
        os.replace(tmp, final)
        result.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        renewer.stop()
        lease.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_case_dir(output: str | Path, case_id: str) -> Iterator[Path]:
    """Yield a temporary folder; on normal exit it becomes ``output/case_id``.

    :func:`case_writer` without the report: on an exception the temporary folder is deleted
    and the old case folder (if any) is left untouched; a failure never replaces an ``ok``
    case of the same inputs.
    """
    with case_writer(output, case_id) as write:
        yield write.path


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def rebuild_index(output: str | Path) -> Path:
    """Rewrite ``output/index.csv`` and its gallery ``index.html`` from the case folders.

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
            rows: list[dict[str, Any]] = []
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
                rows.append(row)
            write_text(root / INDEX, buf.getvalue())
            write_gallery(root, rows)  # index.html: the same rows, with previews
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root / INDEX
