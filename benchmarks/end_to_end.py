"""Benchmark: ``medscan segment`` as a whole process vs SimpleITK+VTK and plain scikit-image.

What a user waits for is the command, not the stages inside one warm process
(``benchmarks/ct_pipeline.py``). This script runs, as separate processes, alternating, for
``--rounds`` rounds on each series:

* ``medscan``: ``medscan segment input=SERIES output=TMP progress=false`` with every default
  output (volume and labels NIfTI, meshes of both lungs and bone in the default formats,
  metrics, QC, manifest, preview);
* ``sitk``: ``benchmarks/ref_sitk_vtk.py`` (GDCM load, SimpleITK thresholds and components,
  VTK discrete flying edges for both lungs and bone, PLY, NIfTI via ITK);
* ``skimage``: ``benchmarks/ref_skimage.py`` (pydicom, ``skimage.measure.label``,
  ``marching_cubes`` at full resolution, trimesh PLY, nibabel), written as a practitioner would;
* ``sitk_like`` (opt-in): ``ref_sitk_vtk.py --like-for-like``, the reference with medscan's
  mesh and preview work added (meshes from a 1.5 mm block mean, smoothed, decimated to 40,000
  faces, PLY + GLB, a preview PNG; see that script);
* ``medscan_nomesh`` (opt-in): ``medscan segment`` without the outputs the reference lacks
  (``mesh_labels=[] preview=false report=false``): what is left when every mesh, the preview
  and the report are dropped -- loading, segmentation, measurements, NIfTI, manifest;
* with ``--before DIR``: ``medscan_before``, the same command from another checkout (an import
  path holding ``medscan``, ``medscan_jobs`` and ``medscan_conf``, e.g. links to an older
  commit's ``medscan/``, ``jobs/`` and ``conf/``), for before/after ratios in one run;
* with ``--startup``: ``medscan segment --help`` and a no-op rerun of ``medscan segment`` on the
  output of a finished run (every case skipped: process start, discovery and hashing).

For each it prints the median wall time, the median CPU time (user + system of the child
process), the largest peak RSS (``ru_maxrss``: the largest single process) and the largest peak
summed PSS of the process tree (the job and its worker processes, ``benchmarks/proctree.py``),
then the ratios of the medians. The reference scripts do
less than medscan (no airway removal, left/right split, smoothing, decimation or preview).

**Read the ratios, not the seconds.** The development machine is shared (2 cores, several
engineers' jobs): absolute times swing by 2-4x with the load, so the pipelines run alternately
within each round and only ratios of medians from one run of this script are comparable.

    .venv/bin/python benchmarks/end_to_end.py [--rounds 3] [--series PATH ...]
        [--only medscan,sitk,skimage[,sitk_like,medscan_nomesh]] [--startup] [--before DIR]
        [-- medscan overrides]

Goals (issue 15): medscan <= 0.5x the SimpleITK+VTK time and >= 8x faster than plain
scikit-image on RICORD and lungdx-a0001; ``--help`` and a no-op rerun under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from proctree import run_measured

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ct"
DEFAULT_SERIES = ("ricord-1a-000082-jpegll", "lungdx-a0001-chest-5mm")
#: medscan without the outputs the SimpleITK + VTK reference does not make (``medscan_nomesh``)
NOMESH = ("mesh_labels=[]", "preview=false", "report=false")


def medscan_exe() -> list[str]:
    """The ``medscan`` console script next to this interpreter (else ``python -m``)."""
    exe = Path(sys.executable).parent / "medscan"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "medscan.cli"]


def run(cmd: Sequence[str], env: dict[str, str], cwd: Path | None = None
        ) -> tuple[float, float, float, float]:
    """Run ``cmd``: wall s, CPU s (user + sys), peak RSS MiB and peak process-tree PSS MiB.

    Raises
    ------
    RuntimeError
        When the command exits non-zero (its stderr tail in the message).
    """
    m = run_measured(cmd, env, cwd)
    if m.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {m.returncode}:\n{m.stderr[-2000:]}")
    return m.wall_s, m.cpu_s, m.maxrss_mib, m.tree_pss_mib


def commands(series: Path, out: Path, extra: list[str]) -> dict[str, list[str]]:
    """The command line of each pipeline for ``series`` writing into ``out``."""
    py = sys.executable
    return {
        "medscan": [*medscan_exe(), "segment", f"input={series}", f"output={out}",
                    "progress=false", *extra],
        "medscan_before": [py, "-m", "medscan.cli", "segment", f"input={series}",
                           f"output={out}", "progress=false", *extra],
        "medscan_nomesh": [*medscan_exe(), "segment", f"input={series}", f"output={out}",
                           "progress=false", *extra, *NOMESH],
        "sitk": [py, str(REPO / "benchmarks" / "ref_sitk_vtk.py"), str(series), str(out)],
        "sitk_like": [py, str(REPO / "benchmarks" / "ref_sitk_vtk.py"), str(series), str(out),
                      "--like-for-like"],
        "skimage": [py, str(REPO / "benchmarks" / "ref_skimage.py"), str(series), str(out)],
    }


def bench_series(series: Path, which: list[str], rounds: int, startup: bool,
                 extra: list[str], env: dict[str, str], before: Path | None = None,
                 ) -> dict[str, list[tuple[float, ...]]]:
    """All rounds on one series: {pipeline: [(wall, cpu, rss), ...]}."""
    if before is not None:
        which = [*which, "medscan_before"]
    # medscan_before: its checkout first on the import path, run outside this repository
    envs = {name: env for name in which}
    envs["medscan_before"] = {**env, "PYTHONPATH": str(before)}
    cwds = {"medscan_before": Path(tempfile.gettempdir())}
    results: dict[str, list[tuple[float, ...]]] = {k: [] for k in which}
    if startup:
        for name in ("medscan", "medscan_before"):
            if name in which:
                tail = name.removeprefix("medscan")
                results.update({f"help{tail}": [], f"rerun{tail}": []})
    for r in range(rounds):
        for name in which:
            out = Path(tempfile.mkdtemp(prefix=f"e2e-{name}-"))
            try:
                results[name].append(run(commands(series, out, extra)[name], envs[name],
                                         cwds.get(name)))
                if startup and name in ("medscan", "medscan_before"):
                    tail = name.removeprefix("medscan")
                    cmd = commands(series, out, extra)[name]
                    results[f"rerun{tail}"].append(run(cmd, envs[name], cwds.get(name)))
                    help_cmd = [*cmd[: cmd.index("segment") + 1], "--help"]
                    results[f"help{tail}"].append(run(help_cmd, envs[name], cwds.get(name)))
            finally:
                shutil.rmtree(out, ignore_errors=True)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def report(series: Path, results: dict[str, list[tuple[float, ...]]]) -> None:
    """Print medians and ratios for one series."""
    print(f"\nseries: {series.name}   rounds: {len(next(iter(results.values())))}")
    print(f"{'pipeline':<16}{'wall s':>9}{'cpu s':>9}{'peak RSS MiB':>14}{'tree PSS MiB':>14}"
          "   wall per round")
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name, runs in results.items():
        if not runs:
            continue
        wall[name] = statistics.median(r[0] for r in runs)
        cpu[name] = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        pss = max(r[3] for r in runs)
        rounds = " ".join(f"{r[0]:.2f}" for r in runs)
        print(f"{name:<16}{wall[name]:>9.2f}{cpu[name]:>9.2f}{rss:>14.0f}{pss:>14.0f}   {rounds}")
    if "medscan" in wall and "sitk" in wall:
        print(f"medscan / SimpleITK+VTK:  wall {wall['medscan'] / wall['sitk']:.2f}x  "
              f"cpu {cpu['medscan'] / cpu['sitk']:.2f}x   (goal <= 0.5x)")
    if "medscan" in wall and "medscan_before" in wall:
        print(f"medscan / medscan_before: wall {wall['medscan'] / wall['medscan_before']:.2f}x  "
              f"cpu {cpu['medscan'] / cpu['medscan_before']:.2f}x")
    if "medscan" in wall and "sitk_like" in wall:
        print(f"medscan / SimpleITK+VTK like-for-like: wall "
              f"{wall['medscan'] / wall['sitk_like']:.2f}x  "
              f"cpu {cpu['medscan'] / cpu['sitk_like']:.2f}x")
    if "medscan_nomesh" in wall and "sitk" in wall:
        print(f"medscan_nomesh / SimpleITK+VTK: wall {wall['medscan_nomesh'] / wall['sitk']:.2f}x"
              f"  cpu {cpu['medscan_nomesh'] / cpu['sitk']:.2f}x   (medscan with no mesh, "
              "preview or report, against the reference with its meshes)")
    if "medscan" in wall and "skimage" in wall:
        print(f"scikit-image / medscan:   wall {wall['skimage'] / wall['medscan']:.2f}x  "
              f"cpu {cpu['skimage'] / cpu['medscan']:.2f}x faster   (goal >= 8x)")
    for name in ("help", "rerun", "help_before", "rerun_before"):
        if name in wall:
            print(f"medscan segment {name}: wall {wall[name]:.2f} s  cpu {cpu[name]:.2f} s  "
                  "(goal < 0.5 s)")


def main() -> None:
    """Parse arguments, run every series, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=Path, nargs="*",
                    default=[DATA / name for name in DEFAULT_SERIES])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="medscan,sitk,skimage")
    ap.add_argument("--startup", action="store_true",
                    help="also time `medscan segment --help` and a no-op rerun")
    ap.add_argument("--before", type=Path, default=None,
                    help="import path of another medscan checkout, run as medscan_before")
    ap.add_argument("extra", nargs="*", help="extra medscan overrides (after --)")
    args = ap.parse_args()
    env = dict(os.environ)
    env.setdefault("MEDSCAN_ID_SECRET", "end-to-end-benchmark")  # no secret file needed
    which = [w for w in args.only.split(",") if w]
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(shared machine: compare ratios, not seconds)")
    for series in args.series:
        if not series.exists():
            print(f"skipped {series}: not found", file=sys.stderr)
            continue
        report(series, bench_series(series, which, args.rounds, args.startup, args.extra, env,
                                    args.before))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
