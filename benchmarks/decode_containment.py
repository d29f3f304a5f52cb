"""Benchmark: cost of decoding compressed series in a crash-contained worker (issue 19).

Loads each series with ``load(series, contain=True)`` (worker process, shared-memory hand-over)
and ``contain=False`` (in-process), interleaved round by round so both see the same machine
load; prints medians and the overhead. The first contained load of a process also starts the
worker (reported separately).

    .venv/bin/python benchmarks/decode_containment.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from medscan.dicom import discover, load

DATA = Path(os.environ.get("MEDSCAN_SHARED_DATA", Path(__file__).resolve().parents[2] /
                           "shared" / "data"))
SERIES = ["ricord-1a-000082-jpegll"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    for name in SERIES:
        series = discover(DATA / "ct" / name).series[0]
        t = time.perf_counter()
        first = load(series, contain=True)
        start = time.perf_counter() - t
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(a.repeats):
            for contain in (False, True):
                t = time.perf_counter()
                vol = load(series, contain=contain)
                times[contain].append(time.perf_counter() - t)
                assert np.array_equal(vol.hu, first.hu)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        print(f"{name}: {series.n_slices} slices {series.transfer_syntax_name}; first contained "
              f"load (starts the worker) {start:.3f} s")
        print(f"  in-process {med[False]:.3f} s, contained {med[True]:.3f} s (medians of "
              f"{a.repeats}); overhead {med[True] - med[False]:+.3f} s "
              f"({100 * (med[True] / med[False] - 1):+.1f}%); fastest {best[False]:.3f} / "
              f"{best[True]:.3f} s ({100 * (best[True] / best[False] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
