"""Peak RSS of every process of a command's process tree (the job and each worker), sampled.

``benchmarks/proctree.py`` gives the tree's summed PSS and ``ru_maxrss`` the largest single
process; this names which process holds what, e.g. the job's process against its decoder and
mesh worker processes:

    .venv/bin/python benchmarks/process_peaks.py -- medscan segment input=SERIES output=OUT \
        progress=false

Prints the exit code, the peak of the summed RSS of the tree and each process's own peak RSS
with the start of its command line. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fp:
                out += [int(x) for x in fp.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fp:
            for line in fp:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as fp:
            return fp.read().replace("\0", " ")[:70]
    except OSError:
        return "?"


def main() -> None:
    """Run the command, sample its tree, print the peaks."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interval-s", type=float, default=0.05)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak: dict[int, float] = {}
    names: dict[int, str] = {}
    total_peak = 0.0
    while proc.poll() is None:
        total = 0.0
        for pid in _tree(proc.pid):
            rss = _rss_mib(pid)
            if rss is None:
                continue
            total += rss
            if rss > peak.get(pid, 0.0):
                peak[pid] = rss
                names[pid] = _cmdline(pid)
        total_peak = max(total_peak, total)
        time.sleep(args.interval_s)
    print(f"exit {proc.returncode}; peak of the summed RSS {total_peak:.0f} MiB")
    for pid, rss in sorted(peak.items(), key=lambda kv: -kv[1]):
        print(f"  {rss:6.0f} MiB  {names.get(pid, '?')}")


if __name__ == "__main__":
    main()
