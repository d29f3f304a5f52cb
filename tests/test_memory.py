"""medscan.memory: a process's RSS and giving freed heap back (glibc ``malloc_trim``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medscan.memory import CaseMemory, rss_mib

# Allocates ~300 MiB in 100 KiB blocks (below glibc's mmap threshold: heap memory), frees all
# but the last block (which pins the top of the heap, so free() cannot trim it away), and
# prints the RSS after the free and after release_free_heap().
_FRAGMENTED_HEAP = """
import ctypes, sys
from medscan.memory import release_free_heap, rss_mib
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(100 * 1024) for _ in range(3000)]
for b in blocks:
    ctypes.memset(b, 1, 100 * 1024)  # touch every page: resident
for b in blocks[:-1]:
    libc.free(b)
held = rss_mib()
called = release_free_heap()
print(held, rss_mib(), called)
"""


def test_rss_of_this_process_and_of_a_missing_one() -> None:
    here = rss_mib()
    assert here is not None and 10 < here < 64 * 1024
    assert rss_mib(os.getpid()) == pytest.approx(here, rel=0.5)
    assert rss_mib(2**22 + 12345) is None  # above pid_max: no such process


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim: Linux")
def test_release_free_heap_gives_freed_heap_back() -> None:
    """Freed heap blocks stay resident until malloc_trim: RSS falls by most of the 300 MiB."""
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True,
                         text=True, check=True).stdout.split()
    held, after, called = float(out[0]), float(out[1]), out[2]
    assert called == "True"
    assert held - after > 200, (held, after)



_CYCLE = """
import gc
import numpy as np
from medscan.memory import CaseMemory, rss_mib
gc.disable()  # as between two automatic collections
memory = CaseMemory()
class Node:
    pass
for case in range(3):
    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle, as trimesh's meshes and matplotlib's figures
    a.data = np.ones(40_000_000, np.uint8)  # 40 MB held by the cycle
    del a, b
    memory.after_case()
held = rss_mib()
frozen = gc.get_freeze_count()
memory.close()
print(held, frozen, gc.get_freeze_count())
"""


def test_case_memory_collects_cycles_freezes_once_and_unfreezes() -> None:
    """Three cases' cyclic garbage (40 MB each) does not pile up; the freeze is undone."""
    out = subprocess.run([sys.executable, "-c", _CYCLE], capture_output=True, text=True,
                         check=True).stdout.split()
    held, frozen, after = float(out[0]), int(out[1]), int(out[2])
    assert held < 60 + 40, held  # interpreter + NumPy, not 3 x 40 MB
    assert frozen > 0 and after == 0


def test_before_case_works_between_cases_only(monkeypatch) -> None:
    """A job calls before_case() before each case: the first call does nothing (so nothing
    runs after the last case, just before the process ends); every later one is after_case."""
    calls = []
    memory = CaseMemory()
    monkeypatch.setattr(memory, "after_case", lambda: calls.append("after"))
    memory.before_case()
    assert calls == []
    memory.before_case()
    memory.before_case()
    assert calls == ["after", "after"]
