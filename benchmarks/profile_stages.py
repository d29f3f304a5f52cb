"""Where the time goes: shares of a py-spy raw profile of ``medscan segment`` by stage.

    py-spy record -r 50 --subprocesses -f raw -o profile.txt -- \
        .venv/bin/python -m medscan.cli segment input=SERIES output=OUT progress=false
    .venv/bin/python benchmarks/profile_stages.py profile.txt

Samples of the job's process and of its contained worker processes (decoders, the parallel
mesh) are attributed to the first matching stage (frames matched by file or function name);
the worker's parent-watch thread, asleep but counted by py-spy, is left out. Shares are of all
samples of all processes (CPU time, not wall time: processes overlap).
"""

from __future__ import annotations

import collections
import sys

WORKER_RULES = [
    ("decode (decoder worker processes)", ["decode_slices", "_fill_slice", "decode_file"]),
    ("bone mesh (mesh worker process)", ["contained_surface"]),
    ("preview drawing (mesh worker process)", ["render_contained"]),
    ("mesh worker warm-up", ["warm_up"]),
    ("worker start-up (imports)", ["_find_and_load"]),
]
MAIN_RULES = [
    ("imports", ["_find_and_load"]),
    ("segment", ["medscan/ct/segment.py"]),
    ("mesh, main process (lungs, crops)", ["medscan/ct/mesh.py", "_Meshes"]),
    ("measure", ["measure_case", "medscan/ct/measure.py", "structures.py", "regions.py",
                 "density.py"]),
    ("preview", ["render.py"]),
    ("write (NIfTI, meshes, report, manifest)", ["write_case", "nifti", "io/mesh", "case_writer",
                                                 "report", "atomic"]),
    ("load (waiting for the decoders) / prefetch", ["load (medscan/dicom/pixels", "prefetch",
                                                    "run_contained"]),
    ("discover + headers", ["discover", "read_header"]),
    ("hashing", ["hashing"]),
    ("hydra / cli", ["hydra", "omegaconf", "cli.py"]),
]


def stage_shares(path: str) -> tuple[collections.Counter[str], int]:
    """Samples per stage and the total, from a py-spy raw (collapsed-stack) file."""
    total = 0
    agg: collections.Counter[str] = collections.Counter()
    with open(path) as fp:
        for line in fp:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            parts = stack.split(";")
            worker = len(parts) > 1 and parts[1].startswith("process ") and (
                "_decode_worker" in parts[1])
            frames = ";".join(parts[2:] if worker else parts[1:])
            if "_exit_with_parent" in frames:
                continue
            total += n
            prefix = "worker: " if worker else "main: "
            for name, keys in WORKER_RULES if worker else MAIN_RULES:
                if any(k in frames for k in keys):
                    agg[prefix + name] += n
                    break
            else:
                agg[prefix + "other"] += n
    return agg, total


def main() -> None:
    """Print the table."""
    agg, total = stage_shares(sys.argv[1])
    for name, n in agg.most_common():
        print(f"{name:55s} {n:5d} {100 * n / total:5.1f}%")
    print(f"total samples {total}")


if __name__ == "__main__":
    main()
