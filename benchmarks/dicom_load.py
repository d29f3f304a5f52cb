"""Benchmark: medscan.dicom vs SimpleITK's ImageSeriesReader (GDCM), same process.

Loads each series (file discovery + headers + pixels -> HU volume) with both, a few repeats,
and prints the medians and the medscan/GDCM time ratio (goal <= 1.0). Also checks that both
give the same HU values outside the padding.

    .venv/bin/python benchmarks/dicom_load.py [--repeats 5] [--data ../shared/data/ct]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medscan.dicom import PADDING_HU, discover, load

SERIES = ["ricord-1a-000082-jpegll", "lungdx-a0001-chest-5mm"]


def load_medscan(folder: Path, workers: int | None) -> np.ndarray:
    found = discover(folder)
    return load(found.series[0], workers=workers).hu


def load_gdcm(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return sitk.GetArrayFromImage(reader.Execute())


def interleaved(fns: dict[str, object], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Run every function once per round (so all see the same machine load); medians."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            results[key] = fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, results


def main() -> None:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None, help="medscan decode threads")
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}, SimpleITK {sitk.Version.VersionString()}")
    print(
        f"{'series':28} {'medscan s':>10} {'1 thread s':>10} {'GDCM s':>8} {'ratio':>6} "
        f"{'ratio 1t':>8}  same HU"
    )
    for name in SERIES:
        folder = args.data / name
        load_gdcm(folder)  # warm the page cache
        med, res = interleaved(
            {
                "gdcm": lambda f=folder: load_gdcm(f),
                "medscan": lambda f=folder: load_medscan(f, args.workers),
                "medscan1": lambda f=folder: load_medscan(f, 1),
            },
            args.repeats,
        )
        ref, hu = np.asarray(res["gdcm"]), np.asarray(res["medscan"])
        # ITK may order slices the other way; compare after matching the z order.
        if hu.shape == ref.shape and not np.array_equal(hu[0] == -1024, ref[0] <= -1024):
            ref = ref[::-1]
        mask = ref > PADDING_HU
        same = hu.shape == ref.shape and np.array_equal(hu[mask], ref[mask])
        print(
            f"{name:28} {med['medscan']:10.3f} {med['medscan1']:10.3f} {med['gdcm']:8.3f} "
            f"{med['medscan'] / med['gdcm']:6.2f} {med['medscan1'] / med['gdcm']:8.2f}  {same}"
        )


if __name__ == "__main__":
    main()
