"""Compare two ``medscan segment`` output folders file by file, ignoring only run times.

Used to show that a speed change left every output the same: run the job from two checkouts
on the same input into two folders, then

    .venv/bin/python benchmarks/compare_case_folders.py OUT_BEFORE OUT_AFTER

Every file must exist in both and be byte-identical, except where a run's own wall time or
timestamp is written: JSON files are compared without keys naming a time (``timings_s``,
``seconds``, ``*_at``, dates ...), ``index.csv`` without its ``seconds`` column, and HTML files
number by number, where only a number in a time cell or a timestamp may differ. Job
bookkeeping (``.hydra``, ``.locks``, ``.medscan``, lock files) is skipped. Exit status 1 when
anything else differs (each difference is printed).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

#: JSON keys holding run times or dates.
VOLATILE_KEY = re.compile(r"timing|time|date|started|finished|duration|elapsed|created|_at$|"
                          r"^seconds$|_s$", re.I)
#: Job bookkeeping, not outputs.
SKIP = re.compile(r"(^|/)(\.hydra|\.locks|\.medscan)(/|$)|\.lock$")
#: Text before a number that marks it as a wall time or a timestamp.
TIME_CONTEXT = re.compile(r"(time</td><td>|T\d\d:(\d\d:)?|\d{4}-(\d\d-)?)$")
NUMBER = re.compile(r"(\d+(?:\.\d+)?)")


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not VOLATILE_KEY.search(k)}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _csv_without_seconds(data: bytes) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    for row in rows:
        row.pop("seconds", None)
    return rows


def _html_time_only(name: str, a: bytes, b: bytes) -> bool:
    """True when the two pages differ only in numbers that are run times or timestamps."""
    ta, tb = NUMBER.split(a.decode()), NUMBER.split(b.decode())
    if len(ta) != len(tb):
        print(f"  {name}: different text")
        return False
    ok = True
    for i, (u, v) in enumerate(zip(ta, tb, strict=True)):
        if u == v:
            continue
        before = "".join(ta[max(0, i - 6):i])[-40:]
        after = ta[i + 1] if i + 1 < len(ta) else ""
        # the index table's last cell is the job's seconds
        last_cell = after.startswith("</td></tr>") and 'class="num"' in before
        if i % 2 == 0 or not (TIME_CONTEXT.search(before) or last_cell):
            print(f"  {name}: {before!r} {u} -> {v}")
            ok = False
    return ok


def compare(a: Path, b: Path) -> int:
    """Print the comparison of folders ``a`` and ``b``; the number of differing files."""
    def files(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
                if p.is_file() and not SKIP.search(str(p.relative_to(root)))}

    fa, fb = files(a), files(b)
    bad = 0
    for name in sorted(set(fa) ^ set(fb)):
        print(f"only in one folder: {name}")
        bad += 1
    same, same_but_time = 0, 0
    for name in sorted(set(fa) & set(fb)):
        x, y = fa[name].read_bytes(), fb[name].read_bytes()
        if x == y:
            same += 1
        elif name.endswith(".json") and _without_times(json.loads(x)) == _without_times(
                json.loads(y)):
            same_but_time += 1
        elif name.endswith(".csv") and _csv_without_seconds(x) == _csv_without_seconds(y):
            same_but_time += 1
        elif name.endswith(".html") and _html_time_only(name, x, y):
            same_but_time += 1
        else:
            print(f"differs: {name}")
            bad += 1
    print(f"{len(fa)} files: {same} byte-identical, {same_but_time} identical but for run "
          f"times/timestamps, {bad} different")
    return bad


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(1 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 0)
