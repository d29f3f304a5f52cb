"""Atomic case folders: build ``DIR/.tmp-<case_id>-<token>/``, rename to ``DIR/<case_id>``.

* :func:`case_writer` / :func:`atomic_case_dir` -- a case is written in
  ``DIR/.tmp-<case_id>-<token>/`` and renamed to ``DIR/<case_id>`` only when complete (an old
  folder is renamed aside first, then deleted); a failure never replaces an ``ok`` case of the
  same inputs.
* Concurrent runs on one folder (Slurm shards, a rerun started twice): :func:`remove_stale`
  deletes only temporary folders whose :class:`Lease` (host, pid, pid start time, renewed mtime)
  proves the writer dead. (The per-case lock is :func:`medscan.batch.case_lock`.)

The mechanics :func:`medscan.io.case.write_case` commits every case folder with (moved here from
:mod:`medscan.batch`, which re-exports them, so that ``medscan.io`` needs nothing above it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medscan.io.atomic import read_json, write_json
from medscan.io.layout import read_manifest

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
#: A lease not renewed for this long belongs to a dead (or hung) writer (seconds). Writers renew
#: theirs every ``LEASE_S / 6``; a case taking longer than this is fine (the lease is renewed).
LEASE_S = 900.0
LEASE_PREFIX = ".lease-"


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


#: Errors writing into the output folder that stop a job (exit 2) instead of failing a case.
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def output_error(exc: BaseException, *folders: str | Path) -> OSError | None:
    """The OSError in ``exc``'s chain that means the output folder broke, else None.

    Disk full, quota exceeded, read-only file system (:data:`OUTPUT_ERRNOS`) anywhere, or
    permission denied on a path inside one of ``folders`` (the batch output folder, the case's
    temporary folder): such errors stop a job (exit 2) instead of failing one case, and
    :func:`medscan.io.case.write_case` never records them as a failed optional output.
    """
    roots = []
    for folder in folders:
        with contextlib.suppress(OSError):
            roots.append(Path(folder).resolve())
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, OSError):
            if seen.errno in OUTPUT_ERRNOS:
                return seen
            name = seen.filename
            if seen.errno in (errno.EACCES, errno.EPERM) and name is not None:
                for root in roots:
                    with contextlib.suppress(ValueError, OSError):
                        Path(os.fsdecode(name)).resolve().relative_to(root)
                        return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass
class CaseWrite:
    """What :func:`case_writer` did: ``path`` is the temporary folder to fill.

    After the block, ``committed`` tells whether it became ``DIR/<case_id>``; ``kept`` is True
    when a failed result was not allowed to replace a finished ``ok`` case of the same inputs.
    """

    path: Path
    committed: bool = False
    kept: bool = False
    manifest: dict[str, Any] | None = None


def _keeps_existing(final: Path, build: Path) -> bool:
    """A failed result never replaces an ``ok`` case made from the same inputs."""
    try:
        new = read_manifest(build)
        old = read_manifest(final)
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
        if final.exists() and _keeps_existing(final, build):
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
