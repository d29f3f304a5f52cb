"""Benchmark: ``medscan.ct.measure.measure_case`` per block, min of N, and before/after identity.

The inputs are prepared once (load each series, segment it with the default options) and
cached as ``.npz`` (HU, labels, affine), so every code version measures the very same arrays.
Each version runs in its own process; the processes alternate (``--rounds``) and each times
``--repeats`` calls per series. Reported: the minimum over all calls (the machine is shared, the
minimum is the least disturbed run) of the whole ``measure_case`` and of the blocks it calls
(the functions of ``medscan.ct.measure`` listed in :data:`BLOCKS` that exist in that version,
timed by wrapping them), and the ratio after / before. The metrics of every version are
written as canonical JSON (``json.dumps(sort_keys=True)``) and compared byte for byte.

    .venv/bin/python benchmarks/measure_case.py [--before REV] [--repeats 3] [--rounds 2]
        [--series ricord,...|all] [--cache DIR]

``--before REV`` checks ``REV`` out into a temporary git worktree and runs the same benchmark
against its ``medscan`` package (``PYTHONPATH``); without it only the current tree is timed.
Exit status 1 when a version's metrics differ from the current tree's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ct"
SERIES = {
    "ricord": DATA / "ricord-1a-000082-jpegll",
    "a0001": DATA / "lungdx-a0001-chest-5mm",
    "a0002-b40f": DATA / "lungdx-a0002-b40f",
    "a0002-b70f": DATA / "lungdx-a0002-b70f",
    "sample": REPO / "medscan" / "sample" / "ct-lungdx-a0002-b40f",
}
#: Functions of ``medscan.ct.measure`` timed as blocks when the version has them.
BLOCKS = ("measure", "lung_coverage", "lung_voxels", "lung_regions", "_structures",
          "structure_stats", "structure_contacts", "label_counts", "ndimage_boxes",
          "face_label_counts", "label_hu_histogram", "_measure_from_histogram",
          "label_geometry", "row_hu_histogram", "region_grid", "lung_regions_from_histogram",
          "percentile_stand_in")


def prepare(names: list[str], cache: Path) -> dict[str, Path]:
    """Load and segment each series once; ``{name: npz path}``."""
    import numpy as np

    out = {}
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = cache / f"{name}.npz"
        if not path.exists():
            from medscan.ct.analyse import CaseOptions
            from medscan.ct.segment import segment
            from medscan.dicom import load_path

            vol = load_path(SERIES[name])
            opts = CaseOptions.defaults()
            seg = segment(vol, opts.tissues, opts.segment)
            np.savez(path, hu=vol.hu, labels=seg.labels, affine=vol.affine)
        out[name] = path
    return out


def child(npz: dict[str, Path], repeats: int, out_dir: Path) -> dict:
    """Time ``measure_case`` in this process (the medscan on ``sys.path``); write metrics."""
    import numpy as np

    import medscan.ct.measure as m
    from medscan.ct.analyse import CaseOptions
    from medscan.volume import Volume

    tissues = CaseOptions.defaults().tissues
    spent: dict[str, float] = {}

    def wrap(name: str):
        fn = getattr(m, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return timed

    for name in BLOCKS:
        if hasattr(m, name):
            setattr(m, name, wrap(name))
    result = {}
    for series, path in npz.items():
        d = np.load(path)
        vol = Volume(d["hu"], d["affine"], case_id=series)
        labels = d["labels"]
        best: dict[str, float] = {}
        for _ in range(repeats):
            spent.clear()
            t = time.perf_counter()
            metrics, findings = m.measure_case(vol, labels, tissues)
            spent["total"] = time.perf_counter() - t
            for k, v in spent.items():
                best[k] = min(best.get(k, float("inf")), v)
        text = json.dumps({"metrics": metrics, "findings": [f.code for f in findings]},
                          sort_keys=True, indent=1)
        (out_dir / f"{series}.json").write_text(text)
        result[series] = {"seconds": best, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    return result


def run_version(label: str, pythonpath: Path | None, npz: dict[str, Path], repeats: int,
                out_dir: Path) -> dict:
    """Run :func:`child` in a fresh process against ``pythonpath``'s medscan."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    (out_dir / label).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", json.dumps({k: str(v) for k, v in npz.items()}),
           "--repeats", str(repeats), "--out", str(out_dir / label)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                          cwd=pythonpath or REPO)
    if proc.returncode:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge(into: dict, new: dict) -> None:
    """Min over rounds, per series and block."""
    for series, r in new.items():
        cur = into.setdefault(series, {"seconds": {}, "sha256": r["sha256"]})
        for k, v in r["seconds"].items():
            cur["seconds"][k] = min(cur["seconds"].get(k, float("inf")), v)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", help="git revision to compare against")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--series", default="all")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "medscan_bench_measure"))
    p.add_argument("--child")
    p.add_argument("--out")
    a = p.parse_args()
    if a.child:
        npz = {k: Path(v) for k, v in json.loads(a.child).items()}
        print(json.dumps(child(npz, a.repeats, Path(a.out))))
        return 0
    names = list(SERIES) if a.series == "all" else a.series.split(",")
    names = [n for n in names if SERIES[n].exists()]
    npz = prepare(names, Path(a.cache))
    work = Path(tempfile.mkdtemp(prefix="bench_measure_"))
    versions: dict[str, Path | None] = {"after": None}
    if a.before:
        tree = work / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(tree),
                        a.before], check=True)
        versions = {"before": tree, "after": None}
    results: dict[str, dict] = {v: {} for v in versions}
    try:
        for _ in range(a.rounds):
            for label, tree in versions.items():
                merge(results[label], run_version(label, tree, npz, a.repeats, work))
    finally:
        if a.before:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(work / "before")], check=False)
    load = os.getloadavg()[0]
    print(f"min of {a.rounds} rounds x {a.repeats} calls; load average {load:.1f}; "
          f"metrics JSON in {work}")
    differ = 0
    for series in names:
        after = results["after"][series]
        print(f"\n## {series}")
        print("| block | " + " | ".join(f"{v} s" for v in versions)
              + (" | after/before |" if a.before else " |"))
        print("| --- " * (len(versions) + 1 + bool(a.before)) + "|")
        keys = sorted({k for v in results.values() for k in v[series]["seconds"]},
                      key=lambda k: (k == "total", k))
        for k in keys:
            vals = [results[v][series]["seconds"].get(k) for v in versions]
            row = " | ".join("" if x is None else f"{x:.3f}" for x in vals)
            ratio = ""
            if a.before and None not in vals:
                ratio = f" | {vals[1] / vals[0]:.2f}x"
            print(f"| {k} | {row}{ratio} |")
        if a.before:
            same = results["before"][series]["sha256"] == after["sha256"]
            differ += not same
            print(f"metrics identical before/after: {same}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
