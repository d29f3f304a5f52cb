"""A no-op rerun of ``medscan segment`` answered in a fraction of a second (issue 15).

The full rerun proves every case current the long way: it composes the config with Hydra,
reads every DICOM header (series, case ids) and hashes every input file. That takes about a
second for one 255-slice series and minutes for a cohort, and when nothing changed it gives the
same answer again. So a run that ends with exit 0 leaves a *rerun record* in the output folder
(``.medscan/rerun-<key>.json``), and a later run with the same key is answered from it when
neither the input tree nor the case folders changed since:

- the key covers the command line (overrides in order), the working folder, the stat of
  medscan's code and config files and of the main libraries' ``__init__`` (an upgrade), the
  Python executable and the pseudonym secret's fingerprint (a changed secret changes every
  case id);
- the input tree is compared by a keyed digest (HMAC-SHA256 under the pseudonym secret) of its
  file list (the walk of :func:`medscan.filetree.iter_files`, as discovery walks it) with each
  file's size, mtime, ctime, inode and device. Like git's index and make, this trusts file
  metadata; ctime cannot be set by a user, so a rewrite that keeps size and mtime is still
  seen. The digest is taken before the job reads any input and must be the same at its end,
  and inputs changed less than :data:`RACY_S` before the job started are never recorded (a
  change within the file system's time granularity could otherwise go unseen);
- the output tree (case folders, temporary folders; not the index, gallery and batch report,
  which every run rewrites, nor Hydra's logs and the locks) is compared the same way;
- the record holds what a rerun's summary shows: case ids and statuses, the loader-skipped
  files (a keyed digest of each relative path, and the reason) and the warnings. No path and
  no patient identifier.

When the record matches, the summary is printed and the exit code is 0, without importing
Hydra, pydicom or NumPy. Anything else (no record, an override that is not a plain
``key=value``, ``-m``, ``hydra.*``, ``overwrite=true``, an unreadable folder, any difference)
runs the job as always. ``MEDSCAN_RERUN_CHECK=full`` in the environment always runs it.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medscan.filetree import SkippedFile, iter_files, relative_to_root, safe_text

#: Environment variable: ``full`` turns the fast answer off (every rerun runs the job).
CHECK_ENV = "MEDSCAN_RERUN_CHECK"
#: Folder of the rerun records, in the output folder (a dot folder: never a case).
RECORD_DIR = ".medscan"
#: Record layout version.
VERSION = 1
#: Inputs changed less than this before the job started are not trusted to metadata
#: (file system timestamp granularity: 2 s on FAT, 1 s on some network file systems).
RACY_S = 2.0
#: Top-level output entries that are not results (logs, locks, the records): left out of the
#: digest. The index, gallery and batch report are in it: the fast answer does not rebuild
#: them, so a changed or missing one runs the job, which does.
OUTPUT_SKIP = frozenset({".hydra", ".locks", ".index.lock", RECORD_DIR})
#: Records kept per output folder (the newest; older command lines run the job again).
KEEP_RECORDS = 16
#: Commands with a fast rerun answer.
COMMANDS = ("segment",)
_KEY = re.compile(r"[A-Za-z_][\w.]*")
_PLAIN_PATH = re.compile(r"[^\s'\"\[\]{},$]+")

_armed: str | None = None  # the current run's key, set by the CLI around a single run
_finished: dict[str, TreeState | None] = {}  # case folder states as the run left them
_SNAPSHOT_KEY = b"medscan-rerun-case-snapshot"  # in-memory comparison only, never stored


@dataclass(frozen=True)
class TreeState:
    """Keyed digest of a file tree's list and metadata (see the module docstring)."""

    digest: str
    n_files: int
    newest_change_ns: int  # the largest ctime or mtime of its files (0 for an empty tree)


def _overrides(rest: Sequence[str]) -> dict[str, str] | None:
    """The plain ``key=value`` overrides of ``rest``, None when any argument is something else."""
    given: dict[str, str] = {}
    for arg in rest:
        key, sep, value = arg.partition("=")
        if not sep or not _KEY.fullmatch(key) or key.split(".")[0] == "hydra" or key in given:
            return None
        given[key] = value
    return given


def _eligible(command: str, rest: Sequence[str]) -> dict[str, str] | None:
    """The overrides of a run a record may serve, None when it may not.

    Not served: other commands, an argument that is not a plain ``key=value``, and every run
    while :data:`CHECK_ENV` is ``full``.
    """
    if command not in COMMANDS or os.environ.get(CHECK_ENV) == "full":
        return None
    return _overrides(rest)


def _plain_path(value: str | None) -> Path | None:
    """The path an override value names, None when Hydra might read it otherwise.

    A plain value, or one quoted whole without escapes or interpolation (Hydra's grammar
    reads both as that text).
    """
    if not value:
        return None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        if inner and not any(c in inner for c in "'\"\\") and "${" not in inner:
            return Path(inner)
        return None
    if not _PLAIN_PATH.fullmatch(value) or value.lower() in ("null", "none"):
        return None
    return Path(value)


#: Libraries whose upgrade may change what a run finds or writes: the stat of their
#: ``__init__`` is part of the key (an install rewrites it).
STAMPED_LIBRARIES = ("pydicom", "numpy", "scipy", "skimage", "cc3d", "trimesh",
                     "fast_simplification", "nibabel", "hydra", "omegaconf", "pylibjpeg",
                     "libjpeg", "openjpeg", "imagecodecs", "matplotlib", "isal")


def _code_stamp() -> list[tuple[str, int, int]]:
    """(file, size, mtime) of medscan's code, jobs and config, and of the libraries' ``__init__``.

    An edit, upgrade or reinstall changes it (:data:`STAMPED_LIBRARIES`).
    """
    stamp = []
    for library in STAMPED_LIBRARIES:
        spec = importlib.util.find_spec(library)
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            st = os.stat(spec.origin)
            stamp.append((f"{library}:{spec.origin}", st.st_size, st.st_mtime_ns))
    for package in ("medscan", "medscan_jobs", "medscan_conf"):
        spec = importlib.util.find_spec(package)
        for base in (spec.submodule_search_locations or []) if spec else []:
            for folder, dirs, files in os.walk(base):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    if name.endswith((".py", ".yaml")):
                        st = os.stat(os.path.join(folder, name))
                        stamp.append((os.path.relpath(os.path.join(folder, name), base),
                                      st.st_size, st.st_mtime_ns))
    return stamp


def run_key(command: str, rest: Sequence[str], fingerprint: str) -> str:
    """The key of a run: what its result depends on besides its inputs (hex SHA-256)."""
    text = json.dumps([VERSION, command, list(rest), os.getcwd(), sys.executable, fingerprint,
                       _code_stamp()])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _entry_bytes(rel: bytes, st: os.stat_result) -> bytes:
    meta = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    return rel + b"\0" + ",".join(map(str, meta)).encode() + b"\n"


def _digest(secret: bytes, entries: Iterable[tuple[bytes, os.stat_result]]) -> TreeState:
    items = sorted(entries, key=lambda e: e[0])
    mac = hmac.new(secret, b"medscan-rerun-tree\0", hashlib.sha256)
    newest = 0
    for rel, st in items:
        mac.update(_entry_bytes(rel, st))
        newest = max(newest, st.st_ctime_ns)  # set by the kernel's clock (mtime can be any)
    return TreeState(mac.hexdigest(), len(items), newest)


def _fresh_stat(path: str, follow: bool = True) -> os.stat_result:
    """``stat`` of ``path``, taken after opening it.

    On NFS, open revalidates the cached attributes (close-to-open consistency), so another
    host's recent write is seen; a plain ``stat`` may answer from a cache up to a minute old.
    """
    if not follow and os.path.islink(path):
        return os.lstat(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the check
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the input ``root`` (its folder when ``root`` is a file)."""
    return os.path.relpath(path, root if root.is_dir() else root.parent)


def _input_files(root: Path) -> list[tuple[Path, os.stat_result]] | None:
    """The input tree's files, walked as discovery walks it, with their metadata.

    None when a folder is unreadable or a file vanishes during the walk (the full run reports
    those).
    """
    errors: list[SkippedFile] = []
    try:
        files = [(path, _fresh_stat(str(path))) for path in iter_files(root, errors)]
    except OSError:
        return None
    return None if errors else files


def _input_digest(secret: bytes, root: Path, files: list[tuple[Path, os.stat_result]]
                  ) -> TreeState:
    return _digest(secret, [(os.fsencode(_relative(path, root)), st) for path, st in files])


def input_state(secret: bytes, root: Path) -> TreeState | None:
    """The input tree's state (:func:`_input_files`), None when it cannot be walked."""
    files = _input_files(root)
    return None if files is None else _input_digest(secret, root, files)


def output_state(secret: bytes, output: Path) -> TreeState | None:
    """The output tree's state: its files and folders, not the root's :data:`OUTPUT_SKIP`.

    None when it cannot be read.
    """
    entries = []
    try:
        for folder, dirs, files in os.walk(output):
            if os.path.samefile(folder, output):
                dirs[:] = [d for d in dirs if d not in OUTPUT_SKIP]
                files = [f for f in files if f not in OUTPUT_SKIP]
            for name in files + dirs:  # folders too: an added (empty) one is a change
                path = os.path.join(folder, name)
                tail = b"/" if name in dirs else b""
                entries.append((os.fsencode(os.path.relpath(path, output)) + tail,
                                _fresh_stat(path, follow=False)))
    except OSError:
        return None
    return _digest(secret, entries)


def case_finished(output: Path, case_id: str) -> None:
    """Note the state of a case folder as the run leaves it (while it holds the case's lock).

    :func:`finish` records nothing when a case folder differs from this at the end of the run:
    edited (napari) or removed while the batch went on, the run's row for it is out of date.
    """
    if _armed is None:
        return
    _finished[case_id] = output_state(_SNAPSHOT_KEY, output / case_id)


def _path_tag(secret: bytes, rel: str) -> str:
    return hmac.new(secret, b"medscan-rerun-path\0" + rel.encode("utf-8", "surrogateescape"),
                    hashlib.sha256).hexdigest()[:32]


def _record_path(output: Path, key: str) -> Path:
    return output / RECORD_DIR / f"rerun-{key[:32]}.json"


def _secret(overrides: dict[str, str]) -> bytes:
    from medscan.secret import resolve_secret

    salt = overrides.get("salt")
    if salt is not None and salt.lower() == "null":  # Hydra's null: no salt given
        salt = None
    return resolve_secret(salt or None)


def arm(command: str, rest: Sequence[str]) -> None:
    """Remember this run's key, so the job can leave a record (the CLI, single runs only)."""
    global _armed
    _armed = None
    _finished.clear()
    overrides = _eligible(command, rest)
    if overrides is None:
        return
    from medscan.secret import SecretError, fingerprint_of

    try:
        _armed = run_key(command, rest, fingerprint_of(_secret(overrides)))
    except (SecretError, OSError):
        _armed = None


def disarm() -> None:
    """Forget the key (after the run)."""
    global _armed
    _armed = None
    _finished.clear()


def answer(command: str, rest: Sequence[str]) -> int | None:
    """Answer a no-op rerun from its record: print the summary and return 0, else None.

    None means: run the job (no record, something changed, or the run is not eligible).
    """
    overrides = _eligible(command, rest)
    if overrides is None:
        return None
    if overrides.get("overwrite", "false").lower() != "false":  # Hydra's false only: any
        return None  # other value is the job's to read (or refuse)
    source, output = _plain_path(overrides.get("input")), _plain_path(overrides.get("output"))
    if source is None or output is None or not output.is_dir() or not source.exists():
        return None
    from medscan.secret import SecretError, fingerprint_of

    try:
        secret = _secret(overrides)
        key = run_key(command, rest, fingerprint_of(secret))
        record = json.loads(_record_path(output, key).read_text(encoding="utf-8"))
    except (SecretError, OSError, ValueError):
        return None
    if record.get("version") != VERSION or record.get("key") != key:
        return None
    files = _input_files(source)
    if files is None or _input_digest(secret, source, files).digest != record["inputs"]:
        return None
    outputs = output_state(secret, output)
    if outputs is None or outputs.digest != record["outputs"]:
        return None
    names = _skipped_names(secret, source, [path for path, _ in files], record["skipped"])
    if names is None:
        return None
    kept = [f"case {c} {r}" for c, _, r in record["rows"] if r.startswith("kept:")]
    for line in [*record["warnings"], *kept]:  # as the full run logs them
        print(f"medscan segment: {line}", file=sys.stderr)
    print(f"medscan segment: nothing changed since the run of {record['created']} (inputs, "
          f"case folders and command line; {CHECK_ENV}=full checks by content)",
          file=sys.stderr)
    from medscan.summary import print_summary

    print_summary([(c, s, r, 0.0) for c, s, r in record["rows"]], names, output)
    return 0


def _skipped_names(secret: bytes, source: Path, paths: list[Path], skipped: list[list[str]]
                   ) -> list[tuple[str, str]] | None:
    """The loader-skipped files of the record with their relative paths (None: one is gone)."""
    by_tag = {_path_tag(secret, _relative(path, source)): path for path in paths}
    names = []
    for tag, reason in skipped:
        if tag not in by_tag:
            return None
        names.append((relative_to_root(by_tag[tag], source), reason))
    return names


def begin(source: Path, salt: str | None) -> tuple[float, TreeState] | None:
    """Start of an armed run: the input tree's state before any file is read (else None)."""
    if _armed is None:
        return None
    from medscan.secret import resolve_secret

    started = time.time()
    state = input_state(resolve_secret(salt), source)
    return None if state is None else (started, state)


def finish(start: tuple[float, TreeState] | None, source: Path, output: Path,
           salt: str | None, rows: Sequence[tuple[str, str, str, float]],
           skipped: Sequence[SkippedFile], warnings: Sequence[str], code: int) -> bool:
    """End of an armed run with exit code ``code``: leave the record when it may be trusted.

    Returns True when a record was written. Not written when the run failed (``code != 0``),
    when the inputs changed during the run or less than :data:`RACY_S` before it, or when it
    cannot be written (then the next rerun simply runs the job).
    """
    if start is None or _armed is None or code != 0:
        return False
    started, before = start
    from medscan.secret import resolve_secret

    secret = resolve_secret(salt)
    after = input_state(secret, source)
    if after != before or before.newest_change_ns >= (started - RACY_S) * 1e9:
        return False
    outputs = output_state(secret, output)
    if outputs is None or any(output_state(_SNAPSHOT_KEY, output / case_id) != state
                              for case_id, state in _finished.items()):
        return False  # a case folder changed after the run finished it: its row is stale
    record = {
        "version": VERSION,
        "key": _armed,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "inputs": before.digest,
        "outputs": outputs.digest,
        "rows": [_as_rerun(row) for row in rows],
        "skipped": [[_path_tag(secret, _relative(item.path, source)),
                     safe_text(str(item.reason))] for item in skipped],
        "warnings": [safe_text(w) for w in warnings],
    }
    from medscan.io.atomic import write_text

    try:
        (output / RECORD_DIR).mkdir(exist_ok=True)
        write_text(_record_path(output, _armed), json.dumps(record, indent=1))
        _prune(output / RECORD_DIR)
    except OSError:
        return False
    return True


def _prune(folder: Path) -> None:
    """Keep the newest :data:`KEEP_RECORDS` records (one per command line used on the folder)."""
    records = sorted(folder.glob("rerun-*.json"), key=lambda p: p.stat().st_mtime_ns,
                     reverse=True)
    for old in records[KEEP_RECORDS:]:
        old.unlink(missing_ok=True)


def _as_rerun(row: Sequence[Any]) -> list[str]:
    """How a case of this run shows in a rerun: a finished case is skipped as current."""
    case_id, status, reason = str(row[0]), str(row[1]), str(row[2])
    if status == "ok" and not reason.startswith("kept:"):
        return [case_id, "skipped", "unchanged inputs and config"]
    return [case_id, status, safe_text(reason)]
