"""Run a command as the user would and measure it whole: wall, CPU and memory of its process tree.

``ru_maxrss`` of a waited process is the peak of its largest single process: a job that runs
contained worker processes (decoders, the parallel mesh, the next case decoded ahead) uses more
than that. The peak *summed PSS* (proportional set size: each shared page counted once, shared
pages split between the processes mapping them; what a Slurm memory cgroup charges, roughly)
of the process and all its descendants, sampled every ``interval_s``, is reported beside it.
Linux only (``/proc/<pid>/smaps_rollup``, kernel >= 4.14).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    """One run of a command."""

    wall_s: float
    cpu_s: float  # user + system of the process and its waited-for descendants
    maxrss_mib: float  # ru_maxrss: the largest single process
    tree_pss_mib: float  # peak summed PSS of the process tree (0.0 where /proc lacks it)
    returncode: int
    stderr: str


def _descendants(pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def tree_pss_mib(pid: int) -> float:
    """Summed PSS (MiB) of ``pid`` and its descendants now (0.0 when unreadable)."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue
    return total / 1024.0


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None, interval_s: float = 0.2) -> Measured:
    """Run ``cmd`` to its end, sampling the tree's PSS; stdout discarded, stderr kept."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stderr.read()),  # type: ignore
                              daemon=True)
    reader.start()
    peak, next_sample = 0.0, 0.0
    while True:  # the exit is seen within 5 ms (the wall time), the tree sampled every interval
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.perf_counter()
        if now >= next_sample:
            peak = max(peak, tree_pss_mib(proc.pid))
            next_sample = now + interval_s
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, peak,
                    proc.returncode, b"".join(chunks).decode(errors="replace"))
