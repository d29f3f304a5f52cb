"""Benchmark: a contained decode in one worker process vs split over two (issue 15).

RICORD (255 JPEG Lossless slices, pylibjpeg-libjpeg: holds the GIL, so one worker decodes on
one core). ``load(series, processes=1)`` and ``processes=2`` alternate round by round so both
see the same machine load:

* cold: each load in a fresh process (the worker processes start inside the timed load, as in
  a single-case ``medscan segment``), ``--cold`` rounds;
* warm: in one process whose workers are running already, ``--repeats`` rounds.

Prints medians, min-max and the ratio, and checks that both give the same HU array.

    .venv/bin/python benchmarks/decode_parts.py [--cold 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("MEDSCAN_SHARED_DATA", Path(__file__).resolve().parents[2] /
                           "shared" / "data"))
SERIES = DATA / "ct" / "ricord-1a-000082-jpegll"
COLD = """
import sys, time
from medscan.dicom import discover, load
series = discover(sys.argv[1]).series[0]
t = time.perf_counter()
load(series, processes=int(sys.argv[2]))
print(time.perf_counter() - t)
"""


def _line(name: str, values: list[float]) -> float:
    med = statistics.median(values)
    print(f"  {name}: median {med:.2f} s (min {min(values):.2f}, max {max(values):.2f}, "
          f"n={len(values)})")
    return med


def main() -> None:
    """Cold and warm loads, alternating; prints the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cold", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    print(f"{SERIES.name}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    cold: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(a.cold):
        for k in (1, 2):
            out = subprocess.run([sys.executable, "-c", COLD, str(SERIES), str(k)],
                                 capture_output=True, text=True, check=True).stdout
            cold[k].append(float(out.split()[-1]))
    print("cold (fresh process, workers start inside the load):")
    c1, c2 = _line("1 process ", cold[1]), _line("2 processes", cold[2])
    print(f"  2 / 1: {c2 / c1:.2f}x")

    from medscan.dicom import discover, load

    series = discover(SERIES).series[0]
    ref = {k: load(series, processes=k).hu for k in (1, 2)}  # starts both workers
    assert np.array_equal(ref[1], ref[2]), "two processes decoded other values"
    warm: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(a.repeats):
        for k in (1, 2):
            t = time.perf_counter()
            load(series, processes=k)
            warm[k].append(time.perf_counter() - t)
    print("warm (workers running):")
    w1, w2 = _line("1 process ", warm[1]), _line("2 processes", warm[2])
    print(f"  2 / 1: {w2 / w1:.2f}x; same HU: yes; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
