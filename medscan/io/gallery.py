"""``OUT/index.html``: a static gallery of every case of a batch (preview, status, metrics, links).

Written by :func:`medscan.io.case.rebuild_index` next to ``index.csv``, from the same rows and
under the same lock, atomically (a browser never loads half a page). The page is plain HTML and
CSS with relative links only: it works from ``file://``, from any static web server, and when
the output folder is copied elsewhere. Failed cases come first (they need a look), each with its
reason; every card links the case's preview, metrics, QC findings and manifest where they exist.
Hand-written rather than a templating library (Jinja2 would be a new dependency for one page);
every value is escaped with :func:`html.escape` and every link quoted with
:func:`urllib.parse.quote`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

from medscan.io.atomic import write_text
from medscan.io.layout import MANIFEST, METRICS, PREVIEW, QC, REPORT

GALLERY = "index.html"

#: Index columns shown on each card: (column, label, unit).
CARD_METRICS = (
    ("lung_volume_ml", "lungs", "ml"),
    ("lung_left_ml", "left", "ml"),
    ("lung_right_ml", "right", "ml"),
    ("lung_complete", "lungs in scan", ""),
    ("mean_lung_hu", "mean lung", "HU"),
    ("laa950_percent", "LAA-950", "%"),
    ("seconds", "time", "s"),
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1rem; background: #fafafa; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem 0; }
.summary { margin: 0 0 1rem 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: .8rem; }
.case { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }
.case.failed { border-color: #c0392b; }
.case h2 { font-size: 1rem; margin: 0 0 .3rem 0; font-family: monospace; }
.status { display: inline-block; padding: 0 .4rem; border-radius: 3px; color: #fff;
          font-size: .8rem; font-family: sans-serif; margin-left: .3rem; }
.status.ok { background: #27ae60; } .status.failed { background: #c0392b; }
.status.other { background: #7f8c8d; }
.case img { width: 100%; height: auto; display: block; }
.nopreview { padding: 2rem 0; text-align: center; color: #888; background: #eee; }
.reason { color: #c0392b; font-size: .85rem; margin: .3rem 0; overflow-wrap: anywhere; }
table.metrics { font-size: .85rem; border-collapse: collapse; margin: .3rem 0; }
table.metrics td { padding: 0 .6rem 0 0; }
.links a { margin-right: .6rem; font-size: .85rem; }
.warn { color: #c0392b; font-weight: bold; }
"""


def _status_class(status: str) -> str:
    return status if status in {"ok", "failed"} else "other"


def _value(key: str, value: str) -> str:
    """A metric cell's HTML; lungs cut off by the scan range are flagged (measure.py coverage)."""
    if key == "lung_complete":
        complete = value.strip().lower() in {"true", "1", "yes"}
        return "complete" if complete else '<span class="warn">cut off (see qc.json)</span>'
    return html.escape(value)


def _card(root: Path, row: Mapping[str, str]) -> str:
    case_id = str(row.get("case_id", ""))
    status = str(row.get("status", ""))
    href = quote(case_id)
    case = root / case_id
    esc = html.escape
    parts = [f'<section class="case {esc(_status_class(status))}" id="{esc(case_id)}">',
             f'<h2><a href="{href}/">{esc(case_id)}</a>'
             f'<span class="status {esc(_status_class(status))}">{esc(status)}</span></h2>']
    if (case / PREVIEW).is_file():
        parts.append(f'<a href="{href}/{PREVIEW}"><img src="{href}/{PREVIEW}" loading="lazy" '
                     f'alt="preview of {esc(case_id)}"></a>')
    else:
        parts.append('<div class="nopreview">no preview</div>')
    if row.get("reason"):
        parts.append(f'<p class="reason">{esc(str(row["reason"]))}</p>')
    cells = [f"<tr><td>{esc(label)}</td><td>{_value(key, str(row[key]))} {esc(unit)}</td></tr>"
             for key, label, unit in CARD_METRICS if row.get(key) not in (None, "")]
    if cells:
        parts.append('<table class="metrics">' + "".join(cells) + "</table>")
    links = [f'<a href="{href}/{name}">{name}</a>' for name in (REPORT, METRICS, QC, MANIFEST)
             if (case / name).is_file()]
    parts.append('<p class="links">' + "".join(links) + "</p>")
    parts.append("</section>")
    return "\n".join(parts)


def render_gallery(root: str | Path, rows: Iterable[Mapping[str, str]],
                   title: str = "medscan segment") -> str:
    """The gallery page for the index rows of the batch in ``root``.

    Parameters
    ----------
    root : str or Path
        The batch output folder (case folders are ``root/<case_id>/``).
    rows : iterable of mapping
        ``index.csv`` rows (:data:`medscan.io.INDEX_COLUMNS`, values as written there).
    title : str
        Page heading.

    Returns
    -------
    str
        A complete HTML5 document; links are relative to ``root``.
    """
    root = Path(root)
    rows = list(rows)
    # failed first (they need a look), then the rest; by case id within each group
    rows.sort(key=lambda r: (r.get("status") != "failed", str(r.get("case_id", ""))))
    n_ok = sum(r.get("status") == "ok" for r in rows)
    n_failed = sum(r.get("status") == "failed" for r in rows)
    summary = (f"{len(rows)} case(s): {n_ok} ok, {n_failed} failed. "
               f'Table: <a href="index.csv">index.csv</a>; '
               f'report with distributions: <a href="{REPORT}">{REPORT}</a>.')
    cards = "\n".join(_card(root, r) for r in rows) or "<p>No cases yet.</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=\"summary\">{summary}</p>\n"
        f'<main class="grid">\n{cards}\n</main>\n</body>\n</html>\n'
    )


def write_gallery(root: str | Path, rows: Iterable[Mapping[str, str]]) -> Path:
    """Atomically write ``root/index.html`` (see :func:`render_gallery`); return its path."""
    root = Path(root)
    return write_text(root / GALLERY, render_gallery(root, rows))
