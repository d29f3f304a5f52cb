"""The end-of-job summary of ``medscan segment`` on stderr (rich tables and one counts line).

One printer for the job (:func:`medscan.ct.job.run_segment`) and for the no-op rerun answered
without running it (:mod:`medscan.rerun`), so both print the same thing. Standard library and
rich only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from medscan.filetree import safe_text

#: Loader-skipped files listed by name; the rest are counted.
MAX_SKIPPED_ROWS = 50


def print_summary(rows: Sequence[tuple[str, str, str, float]],
                  skipped: Sequence[tuple[str, str]], output: str | Path) -> None:
    """Print the cases table, the loader-skipped files and the counts line to stderr.

    Parameters
    ----------
    rows : sequence of (case_id, status, reason, seconds)
        One per case; status ``ok``, ``failed``, ``skipped`` or ``stale``.
    skipped : sequence of (file, reason)
        Files skipped by the loader: the path as shown (relative to the input) and why.
    output : str or Path
        The output folder (named in the table's title).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"medscan segment -> {output}")
    for col in ("case", "status", "reason", "seconds"):
        table.add_column(col)
    style = {"ok": "green", "failed": "red", "skipped": "cyan", "stale": "yellow"}
    for case_id, status, reason, seconds in rows:
        shown = reason if reason.startswith("kept:") else reason[:100]  # kept: says what to do
        table.add_row(case_id, f"[{style.get(status, '')}]{status}[/]",
                      escape(safe_text(shown)), f"{seconds:.1f}")
    # logs and CI capture stderr: do not fold long paths at 80 columns there
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    console.print(table)
    if skipped:
        files = Table(title="files skipped by the loader")
        files.add_column("file")
        files.add_column("reason")
        for name, reason in skipped[:MAX_SKIPPED_ROWS]:
            files.add_row(escape(name), escape(reason))
        if len(skipped) > MAX_SKIPPED_ROWS:
            files.add_row(f"... and {len(skipped) - MAX_SKIPPED_ROWS} more", "")
        console.print(files)
    counts = {s: sum(r[1] == s for r in rows) for s in ("ok", "failed", "skipped", "stale")}
    kept = sum(r[2].startswith("kept:") for r in rows)
    stale = f", {counts['stale']} stale" if counts["stale"] else ""
    kept_text = f" ({kept} hand-edited case(s) kept)" if kept else ""
    console.print(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped{stale}"
        f"{kept_text}; "
        f"{len(skipped)} file(s) skipped by the loader"
    )
