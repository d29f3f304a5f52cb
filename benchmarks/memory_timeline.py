"""Where the job's process holds its memory: RSS over time, by stage, of one ``medscan`` run.

Runs the CLI in this process (same code path as the console script) with a thread that samples
the process's RSS and the main thread's innermost medscan frames every ``--interval-ms``, then
prints the peak, the highest RSS seen in each stage (in order of first appearance) and the RSS
left at the end before and after :func:`medscan.memory.release_free_heap`. Worker processes are not
included: for the job *with* its workers use ``benchmarks/proctree.py`` (summed PSS), as
``batch_throughput.py`` and ``scaling.py`` do.

    .venv/bin/python benchmarks/memory_timeline.py segment input=SERIES output=OUT \
        progress=false [parallel_meshes=false prefetch=false]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from medscan.memory import release_free_heap, rss_mib

#: Frames a stage is named from (the innermost one found, plus the next two below it).
ANCHORS = ("ct/job.py:_write_case", "ct/analyse.py:_analyse", "ct/segment.py:_segment_canonical")


def _stage(main_id: int) -> str:
    frame = sys._current_frames().get(main_id)
    names = []
    while frame is not None:
        code = frame.f_code
        if "medscan" in code.co_filename:
            names.append(f"{code.co_filename.split('medscan/')[-1]}:{code.co_name}")
        frame = frame.f_back
    names.reverse()  # outermost first
    found = [names.index(a) for a in ANCHORS if a in names]
    if not found:
        return " > ".join(names[-2:]) or "-"
    i = max(found)
    return " > ".join(names[i : i + 3])


def main() -> None:
    """Sample while the command runs; print the peak and the per-stage table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=15, help="stages listed (highest RSS)")
    args, command = parser.parse_known_args()
    samples: list[tuple[float, float, str]] = []
    main_id = threading.get_ident()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss_mib() or 0.0, _stage(main_id)))
            time.sleep(args.interval_ms / 1000)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from medscan.cli import main as cli_main

    try:
        code = cli_main(command)
    except SystemExit as exc:
        code = exc.code
    done.set()
    thread.join()
    t0 = samples[0][0]
    peak = max(samples, key=lambda s: s[1])
    print(f"exit {code}; peak RSS {peak[1]:.0f} MiB at {peak[0] - t0:.1f} s in {peak[2]}")
    per: dict[str, tuple[float, float]] = {}
    for t, rss, stage in samples:
        first, high = per.get(stage, (t - t0, 0.0))
        per[stage] = (first, max(high, rss))
    print(f"{'first s':>8} {'max RSS MiB':>12}  stage")
    for stage, (first, high) in sorted(per.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"{first:8.1f} {high:12.0f}  {stage}")
    before = rss_mib() or 0.0
    release_free_heap()
    print(f"at the end: {before:.0f} MiB, after release_free_heap {rss_mib() or 0.0:.0f} MiB")


if __name__ == "__main__":
    main()
