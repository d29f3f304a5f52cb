"""Time :func:`medscan.ct.segment.segment` per step in a warm process (median of N calls).

Usage: ``python benchmarks/segment_stages.py SERIES_FOLDER [--rounds 5] [--cache DIR]``

The series is loaded once (``medscan.dicom.discover`` + ``load``; with ``--cache`` the HU
volume is kept as ``.npz`` there for the next run), segmented once to warm imports and
caches, then ``--rounds`` times; prints the median seconds of every step of
``Segmentation.timings_s`` and of the whole call, and a hash of the label map (the same on
every round, and the value to compare between branches).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

import numpy as np

from medscan.ct.analyse import CaseOptions
from medscan.ct.segment import segment
from medscan.volume import Volume


def _volume(folder: Path, cache: Path | None) -> Volume:
    path = cache / f"{folder.name}_vol.npz" if cache else None
    if path is not None and path.exists():
        z = np.load(path)
        return Volume(hu=z["hu"], affine=z["affine"], case_id="bench")
    from medscan.dicom import discover, load

    vol = load(discover(folder).series[0])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, hu=vol.hu, affine=vol.affine)
    return vol


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("series", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    vol = _volume(args.series, args.cache)
    opts = CaseOptions.defaults()
    segment(vol, opts.tissues, opts.segment)  # warm-up
    steps: dict[str, list[float]] = {}
    totals, hashes = [], set()
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        seg = segment(vol, opts.tissues, opts.segment)
        totals.append(time.perf_counter() - t0)
        hashes.add(hashlib.sha256(seg.labels.tobytes()).hexdigest()[:16])
        for k, v in seg.timings_s.items():
            steps.setdefault(k, []).append(v)
    med = {k: round(statistics.median(v), 3) for k, v in steps.items()}
    print(f"{args.series.name} {vol.shape}: segment median {statistics.median(totals):.3f} s "
          f"(min {min(totals):.3f}, {args.rounds} rounds); labels sha256 {sorted(hashes)}")
    print("  " + "  ".join(f"{k} {v}" for k, v in med.items()))


if __name__ == "__main__":
    main()
