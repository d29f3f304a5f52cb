"""Process memory: what a process holds (RSS) and giving freed heap back to the system.

A batch job runs case after case in one process and in long-lived worker processes
(:mod:`medscan.dicom.contain`). Memory freed by one case is not always returned to the
operating system: glibc keeps freed heap in its arenas, and some native libraries keep the
capacity of their largest input (fast_simplification's global C++ vectors). A Slurm job is
charged for what its processes *hold*, so the job and its workers give freed heap back after
each case (:func:`release_free_heap`), and a worker that still holds much more than a fresh
one is ended instead of kept (``contain.IDLE_WORKER_MAX_RSS_MIB``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os


@functools.cache
def _malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only (not musl, macOS)
    except OSError:
        return None


def release_free_heap() -> bool:
    """Return the heap pages ``free`` kept to the operating system (glibc ``malloc_trim(0)``).

    Written here because no library wraps it: glibc keeps freed memory in its arenas for reuse,
    so a process's RSS stays near its peak after large temporaries are freed (after a 255-slice
    case about 200 MiB of the job's process, measured; docs/performance.md). ``malloc_trim(0)``
    (glibc manual, malloc_trim(3); the remedy Dask's documentation gives for "unmanaged
    memory") releases the free pages at the top and inside every arena. It takes milliseconds
    and changes no result.

    Returns
    -------
    bool
        True when glibc's ``malloc_trim`` was called (False on other C libraries: nothing to do).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # type: ignore[operator]
    return True


def rss_mib(pid: int | None = None) -> float | None:
    """Resident set size of process ``pid`` (default: this process), in MiB.

    Read from ``/proc/<pid>/statm`` (Linux, proc(5)); None where that file cannot be read
    (another system, or the process has gone).
    """
    try:
        with open(f"/proc/{pid or 'self'}/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class CaseMemory:
    """What a batch does between two cases so that memory does not pile up.

    Measured on 20 copies of lungdx-a0001 in one job: the job's RSS rose by about 80 MiB per
    case up to 1030 MiB and fell only when Python's cyclic collector ran a full collection.
    Cases leave their meshes (trimesh's ``Trimesh`` <-> ``ColorVisuals`` cycle) and the
    preview's matplotlib figure (callback registries, transforms) in reference cycles, which
    reference counting never frees. :meth:`after_case` collects them (peak 455 MiB), then
    freezes the survivors once (``gc.freeze``, Python >= 3.7: the imported modules and the
    job's state are never scanned again), which takes each later collection from about 90 ms
    to 4 ms, and gives the freed heap back (:func:`release_free_heap`). :meth:`close` unfreezes,
    so a caller's objects (a notebook's) are collected as usual after the job.
    """

    def __init__(self) -> None:
        self._frozen = False
        self._cases = 0

    def before_case(self) -> None:
        """Before each case of a batch: :meth:`after_case` for the one before, if any.

        Nothing before the first case, and so nothing after the last: a single-case job (or
        the last case of a batch) does not spend 0.2-0.3 s collecting and trimming just before
        the process ends and the operating system takes the memory back anyway.
        """
        if self._cases:
            self.after_case()
        self._cases += 1

    def after_case(self) -> None:
        """Collect the finished case's cycles, freeze the survivors once, trim the heap."""
        gc.collect()
        if not self._frozen:
            gc.freeze()
            self._frozen = True
        release_free_heap()

    def close(self) -> None:
        """Undo the freeze (the objects go back to the collector's oldest generation)."""
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
