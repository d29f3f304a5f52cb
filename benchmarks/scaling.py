"""Benchmark: ``medscan segment`` time and peak memory against the number of slices.

Builds series of ``--slices`` (default 64, 255, 512, 1024) from the 255-slice RICORD series with
pydicom (pixel data copied as it is, JPEG Lossless): fewer slices are the first N of the
stack; more are the stack followed by its mirror image, then the stack again, ... along the
slice normal (so the anatomy continues across each joint), each slice with a new position,
InstanceNumber and SOP Instance UID, one new SeriesInstanceUID per size (deterministic, 2.25
root). Runs ``medscan segment`` (every default output) once per size, alternating sizes over
``--rounds``, and prints wall and CPU time (median), CPU seconds per million voxels, and the
peak RSS as a multiple of the int16 volume (goal: time linear in voxels, peak RSS <= 3x).

    .venv/bin/python benchmarks/scaling.py [--slices 64 255 512 1024] [--rounds 1]

On the shared development machine absolute times move with the load; CPU time is steadier.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from batch_throughput import derived_uid, run_job

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERIES = REPO.parent / "shared" / "data" / "ct" / "ricord-1a-000082-jpegll"


def sized_series(src: Path, dst: Path, n: int) -> tuple[int, int, int]:
    """Write an ``n``-slice series built from ``src`` into ``dst``; returns its (z, y, x)."""
    files = []
    for f in sorted(src.iterdir()):
        try:
            files.append(pydicom.dcmread(f, stop_before_pixels=True))
        except pydicom.errors.InvalidDicomError:
            continue
    normal = np.cross(*(np.array(files[0].ImageOrientationPatient, float).reshape(2, 3)))
    order = sorted(range(len(files)), key=lambda i: float(
        np.dot(normal, np.array(files[i].ImagePositionPatient, float))))
    paths = [Path(files[i].filename) for i in order]
    origin = np.array(files[order[0]].ImagePositionPatient, float)
    step = float(np.dot(normal, np.array(files[order[1]].ImagePositionPatient, float) - origin))
    series_uid = derived_uid("scaling", str(files[0].SeriesInstanceUID), str(n))
    dst.mkdir(parents=True)
    for k in range(n):
        lap, i = divmod(k, len(paths))
        src_path = paths[i if lap % 2 == 0 else len(paths) - 1 - i]  # mirror every other lap
        ds = pydicom.dcmread(src_path)
        position = origin + normal * step * k
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        if "SliceLocation" in ds:
            ds.SliceLocation = f"{float(np.dot(normal, position)):.4f}"
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = series_uid
        sop = derived_uid("scaling-sop", series_uid, str(k))
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.save_as(dst / f"{k:05d}.dcm")
    return n, int(files[0].Rows), int(files[0].Columns)


def main() -> None:
    """Build the sizes, run them alternately, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    ap.add_argument("--slices", type=int, nargs="+", default=[64, 255, 512, 1024])
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    env = dict(os.environ)
    env.setdefault("MEDSCAN_ID_SECRET", "scaling-benchmark")
    work = Path(tempfile.mkdtemp(prefix="scaling-"))
    try:
        shapes = {n: sized_series(args.series, work / f"s{n}", n) for n in args.slices}
        runs: dict[int, list[tuple[float, float, float, float]]] = {n: [] for n in args.slices}
        for _ in range(args.rounds):
            for n in args.slices:
                out = work / f"out{n}"
                # exit 1 (a case failed, e.g. no lungs in a short stack) still wrote outputs
                runs[n].append(run_job(work / f"s{n}", out, env, ok_codes=(0, 1)))
                shutil.rmtree(out, ignore_errors=True)
        print(f"series: {args.series.name}; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs; rounds {args.rounds}")
        print(f"{'slices':>7}{'Mvoxel':>9}{'wall s':>9}{'cpu s':>8}{'cpu s/Mvox':>12}"
              f"{'peak RSS MiB':>14}{'RSS/int16':>11}{'tree PSS MiB':>14}{'PSS/int16':>11}")
        for n in args.slices:
            vox = float(np.prod(shapes[n])) / 1e6
            wall = statistics.median(r[0] for r in runs[n])
            cpu = statistics.median(r[1] for r in runs[n])
            rss = max(r[2] for r in runs[n])
            pss = max(r[3] for r in runs[n])
            ratio = rss * 2**20 / (vox * 1e6 * 2)
            pss_ratio = pss * 2**20 / (vox * 1e6 * 2)
            print(f"{n:>7}{vox:>9.1f}{wall:>9.1f}{cpu:>8.1f}{cpu / vox:>12.3f}{rss:>14.0f}"
                  f"{ratio:>10.1f}x{pss:>14.0f}{pss_ratio:>10.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
