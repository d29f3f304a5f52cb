"""Run native pixel decoders where a crash fails one series, not the whole batch.

Compressed pixel data (JPEG, JPEG-LS, JPEG 2000, RLE) are decoded by native libraries
(libjpeg-turbo, libjpeg, OpenJPEG, CharLS). A corrupt or hostile file can make such a library
read out of bounds and kill the process (a fuzzer found liblj92 doing so on a JPEG Lossless slice
with one flipped Huffman-table byte). :func:`run_contained` therefore runs the decode of a series in
a separate worker process:

* the worker writes the decoded slices into a shared memory-mapped buffer, so nothing large is
  pickled (about 5% of a RICORD load, mostly shared-page faults; ``docs/reliability.md``); the
  buffer's file (in /dev/shm when it fits) is unlinked as soon as both processes have mapped it,
  so a killed batch leaves nothing behind;
* the worker marks each slice as started / done in a small shared state array, so when it dies the
  slices that were being decoded are named;
* a worker killed by a signal raises :class:`DecoderCrashed`, one that runs past its time limit is
  killed and raises :class:`DecoderTimeout`; both name the files.

Workers are plain ``python -m medscan.dicom._decode_worker`` processes that import the decoders once
and then serve requests until they die or the parent goes away; a dead worker is replaced on the
next request. Neither ``multiprocessing``'s fork (a fork of a process that runs threads --
progress bars, thread pools, a GUI -- can deadlock) nor its spawn/forkserver (they re-import the
caller's ``__main__`` script in the worker) is used, nor ProcessPoolExecutor (a dead worker
breaks the whole pool and its exit status is not public).
"""

from __future__ import annotations

import atexit
import importlib
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from medscan.memory import release_free_heap, rss_mib

#: Seconds a worker may take per series before it is killed: a base plus a per-slice allowance
#: (decoding one 512 x 512 slice takes 5-40 ms; a hang is a decoder bug, not a slow disk).
TIMEOUT_BASE_S = 30.0
TIMEOUT_PER_SLICE_S = 1.0
#: States of a slice in the shared state array.
PENDING, STARTED, DONE = 0, 1, 2
#: An idle worker holding more than this (MiB resident) is ended instead of kept for the next
#: request; the next request starts a fresh one. A fresh worker holds about 120 MiB (decoders)
#: to 300 MiB (after the mesh warm-up); after meshing a 255-slice case's bone it holds 410-470
#: MiB once its freed heap is returned (kept), after a 1024-slice case about 1.6 GiB (ended),
#: mostly the capacity fast_simplification's global vectors keep (measured;
#: docs/performance.md). The rule of Celery's ``worker_max_memory_per_child``.
IDLE_WORKER_MAX_RSS_MIB = 512.0


class ContainedError(RuntimeError):
    """A contained decode failed in a way that ended the worker process.

    Attributes
    ----------
    files : list of Path
        Files being decoded when it happened (empty when unknown).
    """

    def __init__(self, message: str, files: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.files = list(files)


class DecoderCrashed(ContainedError):
    """The worker process died (e.g. SIGSEGV in a native decoder)."""


class DecoderTimeout(ContainedError):
    """The worker ran past its time limit and was killed."""


class DecodeCancelled(Exception):
    """The caller's ``cancel`` event was set: the decode was abandoned (its worker killed).

    Not a :class:`ContainedError`: nothing is wrong with the series; a background load
    (:mod:`medscan.ct.prefetch`) was stopped because its result is no longer wanted.
    """


class _Worker:
    """One decoder process and the two pipe ends that talk to it (pickled messages)."""

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "medscan.dicom._decode_worker",
                 str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C goes to the parent, which ends the worker
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.send = Connection(to_child_w, readable=False)
        self.recv = Connection(from_child_r, writable=False)

    def kill(self) -> None:
        """End the process now and release the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        """Release the pipes (the worker exits when it sees its request pipe closed)."""
        self.send.close()
        self.recv.close()


_idle: list[_Worker] = []
_idle_lock = threading.Lock()


def _take_worker() -> _Worker:
    with _idle_lock:
        while _idle:
            worker = _idle.pop()
            if worker.proc.poll() is None:
                return worker
            worker.close()
    return _Worker()


def _give_back(worker: _Worker) -> None:
    """Keep ``worker`` for the next request, or end it when it holds too much memory."""
    held = rss_mib(worker.proc.pid)
    if held is not None and held > IDLE_WORKER_MAX_RSS_MIB:
        worker.close()  # it exits when it sees its request pipe closed
        _reap(worker)
        return
    with _idle_lock:
        _idle.append(worker)


def _reap(worker: _Worker) -> None:
    """Wait for a retired worker in the background (no zombie; the caller goes on)."""
    threading.Thread(target=worker.proc.wait, daemon=True, name="medscan-reap").start()


@atexit.register
def _shutdown() -> None:
    with _idle_lock:
        while _idle:
            _idle.pop().kill()


def _shared_file(nbytes: int) -> tuple[int, str]:
    """Create a file of ``nbytes`` for a shared buffer: in RAM (/dev/shm) when it fits there."""
    folder = None
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 2 * nbytes:  # containers often have a 64 MB /dev/shm
            folder = str(shm)
    fd, name = tempfile.mkstemp(prefix="medscan-decode-", dir=folder)
    os.ftruncate(fd, max(nbytes, 1))
    return fd, name


def serve(request_fd: int, reply_fd: int) -> None:
    """Worker loop: run requests until the request pipe closes (see :mod:`._decode_worker`)."""
    requests = Connection(request_fd, readable=True, writable=False)
    replies = Connection(reply_fd, readable=False, writable=True)
    while True:
        try:
            (module, name, buffer_path, dtype, shape, state_path, offset, state_offset,
             args) = requests.recv()
        except (EOFError, OSError):
            return
        try:
            func = getattr(importlib.import_module(module), name)
            # this request's part of the shared buffers: slices [state_offset, +shape[0])
            out = np.memmap(buffer_path, dtype=dtype, mode="r+", shape=shape, offset=offset)
            state = np.memmap(state_path, dtype=np.int8, mode="r+", shape=(shape[0],),
                              offset=state_offset)
            replies.send(("mapped", None))  # the parent may unlink the files now
            reply: tuple[str, Any] = ("ok", func(out, state, *args))
            del out, state
        except Exception as exc:  # sent back and re-raised in the parent
            reply = ("error", exc)
        release_free_heap()  # before the reply: the parent reads this worker's RSS then
        try:
            replies.send(reply)
        except (BrokenPipeError, OSError):
            return
        except Exception:  # an unpicklable result or exception: send its text
            text = "".join(traceback.format_exception_only(reply[1])).strip()
            replies.send(("error", RuntimeError(text)))


def probe(out: np.ndarray, state: np.ndarray, seconds: float = 0.0, value: int = 0) -> int:
    """Worker health check: fill ``out`` with ``value`` after ``seconds``; returns its pid.

    ``run_contained(probe, shape, dtype, files, 0.0, 7)`` checks that workers start and hand
    data back; a large ``seconds`` exercises the time limit.
    """
    time.sleep(seconds)
    for k in range(out.shape[0]):
        state[k] = STARTED
        out[k] = value
        state[k] = DONE
    return os.getpid()


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def run_contained(
    func: Callable[..., Any],
    shape: tuple[int, ...],
    dtype: np.dtype,
    files: Sequence[Path],
    *args: Any,
    timeout_s: float | None = None,
    on_progress: Callable[[int], Any] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, Any]:
    """Run ``func(out, state, *args)`` in a worker process that may crash.

    One part of :func:`run_contained_parts` (every slice, one worker).

    Parameters
    ----------
    func : callable
        Importable top-level function; fills ``out`` (``shape``, ``dtype``) slice by slice and
        sets ``state[k]`` to :data:`STARTED` / :data:`DONE` around slice ``k``. Its return value
        (small, picklable) is returned; an exception it raises is re-raised here.
    shape : tuple of int
        ``(z, y, x)`` of the output.
    dtype : numpy.dtype
        Output dtype.
    files : sequence of Path
        The file of each slice (``len(files) == shape[0]``), to name in errors.
    *args
        Further arguments of ``func`` (picklable).
    timeout_s : float, optional
        Time limit; default ``TIMEOUT_BASE_S + TIMEOUT_PER_SLICE_S * shape[0]``.
    on_progress : callable, optional
        Called with the number of finished slices about every 0.2 s (progress bars).
    cancel : threading.Event, optional
        Checked about every 0.2 s while waiting; once set, the worker is killed (its shared
        files are gone already or removed here) and :class:`DecodeCancelled` is raised. For a
        load in a background thread, which a ``KeyboardInterrupt`` never reaches.

    Returns
    -------
    out : numpy.ndarray
        The filled array (backed by an anonymous shared mapping, no copy).
    result : object
        What ``func`` returned.

    Raises
    ------
    DecoderCrashed
        The worker died (signal or exit without a result); ``files`` are the slices in flight.
    DecoderTimeout
        The worker ran longer than ``timeout_s`` and was killed.
    DecodeCancelled
        ``cancel`` was set.
    Exception
        Whatever ``func`` raised, re-raised.
    """
    out, results = run_contained_parts(func, shape, dtype, files, [(0, shape[0], args)],
                                       timeout_s=timeout_s, on_progress=on_progress,
                                       cancel=cancel)
    return out, results[0]


def run_contained_parts(
    func: Callable[..., Any],
    shape: tuple[int, ...],
    dtype: np.dtype,
    files: Sequence[Path],
    parts: Sequence[tuple[int, int, tuple[Any, ...]]],
    *,
    timeout_s: float | None = None,
    on_progress: Callable[[int], Any] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, list[Any]]:
    """Fill one shared ``out`` in several worker processes at once, one per part.

    Part ``(start, stop, args)`` runs ``func(out[start:stop], state[start:stop], *args)`` in
    its own worker: each worker maps the same shared buffer and state array at its part's
    offset, so nothing is copied. Every containment guarantee of :func:`run_contained` holds
    for every part: when any worker dies, runs past the time limit, or ``func`` raises in it,
    the other workers are killed (their state is unknown) and the error names the slices in
    flight of the part(s) concerned; the shared files are unlinked once every worker mapped
    them, or at the end.

    Parameters
    ----------
    func : callable
        As for :func:`run_contained`, called on each part's views.
    shape, dtype, files
        Of the whole output, as for :func:`run_contained`.
    parts : sequence of (int, int, tuple)
        Non-empty, disjoint slice ranges ``[start, stop)`` with the arguments of ``func`` for
        that range (e.g. the part's own slice headers).
    timeout_s : float, optional
        Time limit of the whole call; default
        ``TIMEOUT_BASE_S + TIMEOUT_PER_SLICE_S * shape[0]``.
    on_progress : callable, optional
        Called with the number of finished slices of all parts about every 0.2 s.
    cancel : threading.Event, optional
        As for :func:`run_contained`: every worker is killed.

    Returns
    -------
    out : numpy.ndarray
        The filled array.
    results : list
        What ``func`` returned for each part, in the order of ``parts``.

    Raises
    ------
    DecoderCrashed
        A worker died; ``files`` are that part's slices in flight.
    DecoderTimeout
        The time limit passed; ``files`` are the slices in flight of the unfinished parts.
    DecodeCancelled
        ``cancel`` was set.
    Exception
        Whatever ``func`` raised in a part, re-raised (the first one received).
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    slice_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    if not parts or any(not 0 <= a < b <= shape[0] for a, b, _ in parts):
        raise ValueError(f"parts {[(a, b) for a, b, _ in parts]} do not fit {shape[0]} slices")
    if timeout_s is None:
        timeout_s = TIMEOUT_BASE_S + TIMEOUT_PER_SLICE_S * shape[0]
    fd, path = _shared_file(nbytes)
    state_fd, state_path = _shared_file(shape[0])
    busy: dict[int, _Worker] = {}  # part -> its worker, until its reply came
    try:
        buf = mmap.mmap(fd, max(nbytes, 1))
        state_buf = mmap.mmap(state_fd, max(shape[0], 1))
        deadline = time.monotonic() + timeout_s
        for i, (start, stop, args) in enumerate(parts):
            busy[i] = _take_worker()
            request = (func.__module__, func.__qualname__, path, dtype.str,
                       (stop - start, *shape[1:]), state_path, start * slice_bytes, start, args)
            try:
                busy[i].send.send(request)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass  # a worker that died: seen below as its end of file
        replies = _collect(busy, parts, files, state_buf, deadline, timeout_s, on_progress,
                           cancel, (path, state_path))
        for i in range(len(parts)):
            kind, value = replies[i]
            if kind == "error":
                raise value
        out = np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        return out, [replies[i][1] for i in range(len(parts))]
    finally:
        for worker in busy.values():  # interrupted, failed or cancelled: state unknown
            worker.kill()
        os.close(fd)
        os.close(state_fd)
        _unlink(path, state_path)


def _collect(
    busy: dict[int, _Worker],
    parts: Sequence[tuple[int, int, Any]],
    files: Sequence[Path],
    state_buf: mmap.mmap,
    deadline: float,
    timeout_s: float,
    on_progress: Callable[[int], Any] | None,
    cancel: threading.Event | None,
    shared: tuple[str, str],
) -> dict[int, tuple[str, Any]]:
    """Wait for every part's reply; workers that replied leave ``busy`` (back to the pool).

    Stops at the first failure: the caller kills the workers still in ``busy``.
    """
    mapped: set[int] = set()
    replies: dict[int, tuple[str, Any]] = {}
    by_conn = {id(w.recv): i for i, w in busy.items()}
    state = np.frombuffer(state_buf, dtype=np.int8, count=len(files))
    step = 0.2 if (on_progress is not None or cancel is not None) else None
    while busy:
        if cancel is not None and cancel.is_set():
            raise DecodeCancelled("decode cancelled")
        left = deadline - time.monotonic()
        if left <= 0:
            for worker in busy.values():
                worker.kill()
            late = [p for i in sorted(busy) for p in _in_flight(state_buf, files, *parts[i][:2])]
            busy.clear()
            raise DecoderTimeout(f"decoder timed out after {timeout_s:.0f} s and was killed",
                                 late)
        ready = wait([w.recv for w in busy.values()], left if step is None else min(step, left))
        for conn in ready:
            i = by_conn[id(conn)]
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the worker died
                _crashed(busy, i, parts, files, state_buf)
            if message[0] == "mapped":  # both sides hold the mappings: no file can be left
                mapped.add(i)  # behind once every worker has them, even if this process dies
                if len(mapped) == len(parts):
                    _unlink(*shared)
                continue
            replies[i] = message
            _give_back(busy.pop(i))
            if message[0] == "error":
                return replies | {k: message for k in range(len(parts)) if k not in replies}
        if on_progress is not None:
            on_progress(int(np.count_nonzero(state == DONE)))
    return replies


def _crashed(busy: dict[int, _Worker], i: int, parts: Sequence[tuple[int, int, Any]],
             files: Sequence[Path], state_buf: mmap.mmap) -> None:
    """Raise :class:`DecoderCrashed` for part ``i`` (its worker is gone); kill the others."""
    worker = busy.pop(i)
    worker.kill()
    for other in busy.values():
        other.kill()
    busy.clear()
    status = _signal_name(worker.proc.returncode)
    hint = "" if status.startswith("signal") else "; the worker's error is on stderr"
    raise DecoderCrashed(f"decoder crashed ({status}{hint})",
                         _in_flight(state_buf, files, *parts[i][:2]))


def _unlink(*paths: str) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)


def _in_flight(state_buf: mmap.mmap, files: Sequence[Path], start: int = 0,
               stop: int | None = None) -> list[Path]:
    """Files of slices ``[start, stop)`` started but not finished when their worker ended."""
    state = np.frombuffer(state_buf, dtype=np.int8, count=len(files))
    stop = len(files) if stop is None else stop
    return [files[start + k] for k in np.flatnonzero(state[start:stop] == STARTED)]
