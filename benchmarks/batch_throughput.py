"""Benchmark: cases per hour of one ``medscan segment`` job over N copies of a real series.

Writes ``--cases`` copies of a series with pydicom, each under new deterministic Study, Series,
Frame of Reference and SOP Instance UIDs (2.25 root, derived from the copy number: no real
identifiers), into a temporary tree; runs ``medscan segment`` on the single series and then on
the whole tree (one process, every default output) and prints wall and CPU time, cases per hour,
the median per-case time from the manifests (``seconds``) against the single case, and the
job's peak RSS.

    .venv/bin/python benchmarks/batch_throughput.py [--series PATH] [--cases 20] [--keep DIR]
        [--set KEY=VALUE ...] [--compare KEY=VALUE] [--rounds N]

On the shared development machine (2 cores, other jobs running) absolute figures move with the
load; the per-case/single-case ratio comes from the same run. ``--set`` passes overrides to
every job (e.g. ``prefetch=false``); ``--compare prefetch=false`` runs the batch job a second
time with that override, right after the first, on the same copies, and prints both (the
next case's decoding overlaps the current case's compute unless ``prefetch=false``).
``--rounds N`` repeats the batch jobs N times, the variants alternating (the order flips every
round), and prints each variant's medians and their ratio: on a shared machine one pair of
runs can differ by 25% from the load of other jobs alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pydicom
from proctree import run_measured
from pydicom.uid import UID

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERIES = REPO.parent / "shared" / "data" / "ct" / "lungdx-a0001-chest-5mm"


def derived_uid(*parts: str) -> UID:
    """A deterministic UID under 2.25 (UUID-derived root) from ``parts``; never a real one."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return UID("2.25." + str(int(digest[:30], 16)))


def copy_series(src: Path, dst: Path, copy: int) -> None:
    """Copy every DICOM file of ``src`` to ``dst`` with UIDs of copy number ``copy``."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        try:
            ds = pydicom.dcmread(f)
        except pydicom.errors.InvalidDicomError:
            continue
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if key in ds:
                setattr(ds, key, derived_uid(key, str(ds.get(key)), str(copy)))
        sop = derived_uid("SOPInstanceUID", str(ds.SOPInstanceUID), str(copy))
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.save_as(dst / f.name)


def run_job(
    tree: Path, out: Path, env: dict[str, str], ok_codes: tuple[int, ...] = (0,),
    overrides: tuple[str, ...] = (),
) -> tuple[float, float, float, float]:
    """``medscan segment`` on ``tree``: wall s, CPU s (user + sys), peak RSS MiB (the largest
    process) and peak summed PSS MiB of the job's process tree (workers included).

    An exit code outside ``ok_codes`` raises with the end of stderr.
    """
    exe = Path(sys.executable).parent / "medscan"
    cmd = [str(exe), "segment", f"input={tree}", f"output={out}", "progress=false", *overrides]
    m = run_measured(cmd, env)
    if m.returncode not in ok_codes:
        raise RuntimeError(m.stderr[-2000:])
    return m.wall_s, m.cpu_s, m.maxrss_mib, m.tree_pss_mib


def case_seconds(out: Path) -> list[float]:
    """``seconds`` of every case manifest under ``out``."""
    return [json.loads(m.read_text())["seconds"] for m in sorted(out.glob("*/manifest.json"))]


def main() -> None:
    """Build the copies, run single and batch jobs, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--keep", type=Path, default=None, help="keep the tree and outputs here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every job (repeatable)")
    ap.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                    help="run the batch again with these overrides added (repeatable)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the batch variants this many times; medians")
    args = ap.parse_args()
    overrides = tuple(args.set)
    env = dict(os.environ)
    env.setdefault("MEDSCAN_ID_SECRET", "batch-throughput-benchmark")
    work = args.keep or Path(tempfile.mkdtemp(prefix="batch-throughput-"))
    try:
        tree = work / "tree"
        for i in range(args.cases):
            copy_series(args.series, tree / f"copy{i:03d}", i)
        wall1, cpu1, rss1, pss1 = run_job(tree / "copy000", work / "single", env,
                                          overrides=overrides)
        single = case_seconds(work / "single")[0]
        print(f"series: {args.series.name} x {args.cases} copies; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"single job:  wall {wall1:.1f} s  cpu {cpu1:.1f} s  case {single:.1f} s  "
              f"peak RSS {rss1:.0f} MiB, process tree PSS {pss1:.0f} MiB")
        runs = [("batch", overrides)]
        if args.compare:
            runs.append(("batch " + " ".join(args.compare), overrides + tuple(args.compare)))
        walls: dict[str, list[float]] = {name: [] for name, _ in runs}
        cpus: dict[str, list[float]] = {name: [] for name, _ in runs}
        for r in range(args.rounds):
            for k, (name, extra) in (enumerate(runs) if r % 2 == 0
                                     else reversed(list(enumerate(runs)))):
                out = work / f"batch{k}-{r}"
                wall, cpu, rss, pss = run_job(tree, out, env, overrides=extra)
                walls[name].append(wall)
                cpus[name].append(cpu)
                per_case = case_seconds(out)
                assert len(per_case) == args.cases, f"{len(per_case)} cases written"
                print(f"{name}: wall {wall:.1f} s  cpu {cpu:.1f} s  peak RSS {rss:.0f} MiB "
                      f"(process tree PSS {pss:.0f} MiB); "
                      f"{3600 * args.cases / wall:.0f} cases/hour (wall), "
                      f"{3600 * args.cases / cpu:.0f} cases per CPU-hour; load average "
                      f"{os.getloadavg()[0]:.1f}")
                med = statistics.median(per_case)
                print(f"  per case in the batch: median {med:.1f} s (min {min(per_case):.1f}, "
                      f"max {max(per_case):.1f}) = {med / single:.2f}x the single case "
                      "(goal <= 1x)")
                shutil.rmtree(out, ignore_errors=True)
        if args.rounds > 1:
            for name, _ in runs:
                wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
                print(f"median of {args.rounds}: {name}: wall {wall:.1f} s, cpu {cpu:.1f} s, "
                      f"{3600 * args.cases / wall:.0f} cases/hour")
            if len(runs) == 2:
                a, b = (statistics.median(walls[name]) for name, _ in runs)
                print(f"wall {runs[0][0]} / {runs[1][0]}: {a / b:.2f}x")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
