"""Self-contained HTML reports: ``<case>/report.html`` per case and ``report.html`` per batch.

A report is one file a person can open, mail or archive: the preview figure is embedded
(base64 PNG), the metrics tables come from the case's own ``metrics.json`` (every block present
is shown, by :func:`medscan.io.tables.metric_tables`, the tables the napari widget shows), the QC
findings are listed in plain words, and nothing is fetched from elsewhere (no scripts, fonts,
stylesheets or images by URL; the only links are relative ones to the case's files). The batch
report has the index table and histograms of lung volume and %LAA-950 over the finished cases
(inline SVG).

Every string from data is escaped (:func:`html.escape`). Reports show the pseudonymous case id,
never patient names or input paths. Hand-written HTML (like :mod:`medscan.io.gallery`): a
templating library would be a new dependency for two pages.
"""

from __future__ import annotations

import base64
import html
import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medscan.io.atomic import read_json, write_text
from medscan.io.layout import (
    INDEX,
    INDEX_DECIMALS,
    MANIFEST,
    METRICS,
    PREVIEW,
    QC,
    REPORT,
    format_index_cell,
    read_manifest,
)
from medscan.io.tables import SUMMARY, MetricTable, format_value, metric_tables

#: Plain-language headline of each QC finding code (the finding's message gives the numbers).
FINDING_TITLES = {
    "lung_truncated": "A lung is cut off by the scanned range",
    "body_truncated": "The body is cut off by the image edge or field of view",
    "airways": "Trachea and main bronchi were removed from the lungs",
    "airways_skipped": "Airways were not removed",
    "trachea_not_found": "The trachea was not found",
    "no_lungs": "No lungs were found",
    "one_lung": "Only one lung was found",
    "lungs_not_split": "The two lungs could not be separated",
    "lungs_split": "The lungs were separated at a thin junction",
    "metal": "Metal in the scan (implant, wire, ...)",
    "too_short_to_mesh": "Too few slices to build surfaces",
    "mesh_stale": "Meshes and preview show the labels from before an edit",
    "dicom_seg_stale": "The DICOM SEG shows the labels from before an edit",
    "output_failed": "An output that was asked for could not be made",
    "sheared_affine": "Tilted grid: ITK-based tools (3D Slicer) cannot open the NIfTI files",
    "resampled": "Unevenly spaced slices were resampled to even spacing",
    "nonuniform_spacing": "The slices are not evenly spaced",
    "missing_slices": "Slices are missing from the series",
    "gantry_tilt": "The scanner gantry was tilted",
    "gantry_tilt_tag": "The header reports a gantry tilt",
    "padding": "Padding outside the scanned circle was set to air",
    "reoriented": "The image was reoriented",
    "duplicate_position": "Several slices share one position",
    "duplicate_instance": "A slice appears more than once",
    "position_outlier": "A slice lies far from the others",
    "skipped_slices": "Some slices could not be used",
    "rescale_varies": "The HU rescale differs between slices",
    "acquisition_split": "The folder holds several acquisitions",
    "geometry_split": "The folder holds several image geometries",
    "stray_files": "Stray files next to the series",
    "mixed_patients": "The files belong to several patients",
    "mixed_series_files": "Files of another series are mixed in",
    "implausible_extent": "The image extent is implausible",
    "implausible_position": "A slice position is implausible",
}

#: Headline numbers at the top of a case report: (metrics key, label, unit).
HEADLINE = (
    ("lung_volume_ml", "Lungs", "mL"),
    ("lung_left_ml", "Left lung", "mL"),
    ("lung_right_ml", "Right lung", "mL"),
    ("laa950_percent", "%LAA-950", "%"),
    ("perc15_hu", "Perc15", "HU"),
    ("mean_lung_hu", "Mean lung density", "HU"),
)

#: Batch histograms: (index column, title, x-axis label).
HISTOGRAMS = (
    ("lung_volume_ml", "Lung volume", "lung volume (mL)"),
    ("laa950_percent", "%LAA-950", "lung voxels below -950 HU (%)"),
)

_SEVERITY_WORDS = {
    "error": "Problem",
    "warning": "Check",
    "info": "Note",
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.2rem auto; max-width: 1100px;
       color: #222; background: #fff; padding: 0 1rem; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { font-size: .95rem; margin: 1rem 0 .3rem 0; font-family: monospace; }
.status { display: inline-block; padding: 0 .5rem; border-radius: 3px; color: #fff;
          font-size: .85rem; vertical-align: middle; }
.status.ok { background: #27ae60; } .status.failed { background: #c0392b; }
.status.other { background: #7f8c8d; }
.reason { color: #c0392b; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin: .8rem 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .4rem .8rem; min-width: 8rem; }
.card .v { font-size: 1.3rem; font-weight: 600; } .card .l { font-size: .8rem; color: #555; }
img.figure { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: .85rem; margin: .3rem 0 .8rem 0; }
th, td { border: 1px solid #ddd; padding: .15rem .5rem; text-align: right; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; font-family: monospace; }
td.text { text-align: left; }
ul.findings { padding-left: 1.2rem; } ul.findings li { margin: .35rem 0; }
.sev { font-weight: 600; } .sev.error { color: #c0392b; } .sev.warning { color: #d35400; }
.sev.info { color: #2c3e50; }
.about { color: #666; font-size: .8rem; margin-top: 2rem; }
.hist { display: flex; flex-wrap: wrap; gap: 1rem; }
.hist svg { border: 1px solid #eee; font-family: system-ui, sans-serif; }
.wide { overflow-x: auto; } td.name { white-space: nowrap; }
p.note { font-size: .8rem; color: #555; margin: .2rem 0; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _status_class(status: str) -> str:
    return status if status in {"ok", "failed"} else "other"


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes (an image embedded in the page)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_esc(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def table_html(table: MetricTable) -> str:
    """One metrics table as HTML (cells as :func:`~medscan.io.tables.format_value` shows them)."""
    head = "".join(
        f'<th class="name">{_esc(c)}</th>' if i == 0 else f"<th>{_esc(c)}</th>"
        for i, c in enumerate(table.columns)
    )
    rows = []
    for r in range(len(table.rows)):
        cells = "".join(
            f'<td class="name">{_esc(table.cell(r, c))}</td>' if i == 0
            else f"<td>{_esc(table.cell(r, c))}</td>"
            for i, c in enumerate(table.columns)
        )
        rows.append(f"<tr>{cells}</tr>")
    return (f'<div class="wide"><table>\n<tr>{head}</tr>\n' + "\n".join(rows)
            + "\n</table></div>")


def _card(value: str, label: str) -> str:
    return (f'<div class="card"><div class="v">{_esc(value)}</div>'
            f'<div class="l">{_esc(label)}</div></div>')


def _headline(metrics: Mapping[str, Any]) -> str:
    """The headline cards.

    Null lung metrics are never shown as numbers or as "cut off": no lungs at all gives one
    "n/a (no lungs found)" card; a null item beside lungs (one lung found) reads "n/a".
    """
    if "lung_volume_ml" in metrics and metrics["lung_volume_ml"] is None:
        return '<div class="cards">' + _card("n/a (no lungs found)", "Lungs") + "</div>"
    cards = []
    for key, label, unit in HEADLINE:
        if key in metrics:
            value = metrics[key]
            cards.append(_card("n/a" if value is None else f"{format_value(value)} {unit}",
                               label))
    if metrics.get("lung_complete") is not None and metrics.get("lung_volume_ml") is not None:
        word = "yes" if metrics["lung_complete"] else "no: cut off (see the findings)"
        cards.append(_card(word, "Lungs entirely in the scan"))
    return '<div class="cards">' + "".join(cards) + "</div>" if cards else ""


def finding_html(finding: Mapping[str, Any]) -> str:
    """One QC finding as a list item: plain headline, severity word, the message with numbers."""
    code = str(finding.get("code", ""))
    severity = str(finding.get("severity", "info"))
    title = FINDING_TITLES.get(code, code.replace("_", " ").capitalize())
    word = _SEVERITY_WORDS.get(severity, severity.capitalize())
    sev_class = severity if severity in _SEVERITY_WORDS else "info"
    return (f'<li><span class="sev {_esc(sev_class)}">{_esc(word)}:</span> {_esc(title)}. '
            f'{_esc(finding.get("message", ""))} <code>{_esc(code)}</code></li>')


def render_case_report(
    case_id: str,
    status: str,
    reason: str = "",
    metrics: Mapping[str, Any] | None = None,
    findings: Sequence[Mapping[str, Any]] = (),
    preview_png: bytes | None = None,
    about: Mapping[str, Any] | None = None,
) -> str:
    """The case report page.

    Parameters
    ----------
    case_id : str
        Pseudonymous case id (the page title).
    status, reason : str
        ``"ok"`` / ``"failed"`` and why it failed.
    metrics : mapping, optional
        ``metrics.json``: headline numbers, then every block as tables.
    findings : sequence of mapping
        QC findings (``code, severity, message``; ``Finding.to_dict()`` form), loader's first.
    preview_png : bytes, optional
        The preview figure, embedded.
    about : mapping, optional
        Provenance shown at the bottom (``created``, ``medscan``, ``config_hash``, ``backend``).

    Returns
    -------
    str
        A complete HTML5 document without external resources.
    """
    parts = [f"<h1>Case <code>{_esc(case_id)}</code> "
             f'<span class="status {_status_class(status)}">{_esc(status)}</span></h1>']
    if reason:
        parts.append(f'<p class="reason">{_esc(reason)}</p>')
    if metrics:
        parts.append(_headline(metrics))
    if preview_png:
        parts.append("<h2>Preview</h2>")
        parts.append(f'<img class="figure" alt="preview of {_esc(case_id)}" '
                     f'src="{png_data_uri(preview_png)}">')
    parts.append("<h2>Quality control</h2>")
    if findings:
        order = {"error": 0, "warning": 1, "info": 2}
        ordered = sorted(findings, key=lambda f: order.get(str(f.get("severity")), 3))
        parts.append('<ul class="findings">' + "".join(finding_html(f) for f in ordered)
                     + "</ul>")
    else:
        parts.append("<p>No findings: nothing unusual was noticed in the series or the "
                     "segmentation.</p>")
    tables = metric_tables(metrics)
    if tables:
        parts.append("<h2>Measurements</h2>")
        for table in tables:
            title = "Summary" if table.title == SUMMARY else table.title
            parts.append(f"<h3>{_esc(title)}</h3>")
            if table.note:  # band definitions, region bounds (medscan.io.tables)
                parts.append(f'<p class="note">{_esc(table.note)}</p>')
            parts.append(table_html(table))
    if about:
        text = "; ".join(f"{_esc(k)}: {_esc(v)}" for k, v in about.items() if v not in (None, ""))
        parts.append(f'<p class="about">{text}</p>')
    return _page(f"medscan case {case_id}", "\n".join(parts))


def _about(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance lines of a report (no inputs, no config: they may hold paths)."""
    versions = manifest.get("versions") or {}
    return {
        "created": manifest.get("created"),
        "medscan": versions.get("medscan") if isinstance(versions, Mapping) else None,
        "backend": manifest.get("backend"),
        "config hash": str(manifest.get("config_hash", ""))[:16],
    }


def case_findings(qc: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Findings of a ``qc.json`` mapping: the loader's, then the segmentation's."""
    if not qc:
        return []
    out: list[Mapping[str, Any]] = []
    for key in ("loader_findings", "segmentation_findings", "findings"):
        out += [f for f in qc.get(key) or [] if isinstance(f, Mapping)]
    return out


def write_case_report(folder: str | Path, manifest: Mapping[str, Any] | None = None) -> Path:
    """Atomically write ``folder/report.html`` from the case folder's own files.

    Parameters
    ----------
    folder : str or Path
        A case folder (or the temporary folder a case is being built in) holding whichever of
        ``metrics.json``, ``qc.json`` (its findings already name no path) and ``preview.png``
        were written; the report shows exactly what they hold.
    manifest : mapping, optional
        The case's manifest (default: ``folder/manifest.json``); ``write_case`` passes it
        because it writes ``manifest.json`` last.

    Returns
    -------
    Path
        ``folder/report.html``.
    """
    folder = Path(folder)
    if manifest is None:
        manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else {}
    metrics = read_json(folder / METRICS) if (folder / METRICS).is_file() else None
    qc = read_json(folder / QC) if (folder / QC).is_file() else None
    preview = (folder / PREVIEW).read_bytes() if (folder / PREVIEW).is_file() else None
    page = render_case_report(
        case_id=str(manifest.get("case_id", folder.name)),
        status=str(manifest.get("status", "")),
        reason=str(manifest.get("reason", "")),
        metrics=metrics,
        findings=case_findings(qc),
        preview_png=preview,
        about=_about(manifest),
    )
    return write_text(folder / REPORT, page)


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN -> None


def tick_labels(values: Sequence[float], digits: int = 4) -> list[str]:
    """Axis labels for increasing ``values``: ``digits`` significant digits, or more.

    More digits where two neighbours would read the same (one case, or cases of nearly one
    value: numpy's bins then span value +- 0.5, which at 4 digits printed "4486" five times).
    """
    labels = [f"{v:.{digits}g}" for v in values]
    for more in range(digits + 1, 12):
        if all(a != b for a, b in itertools.pairwise(labels)):
            break
        labels = [f"{v:.{more}g}" for v in values]
    return labels


def histogram_svg(values: Sequence[float], title: str, xlabel: str,
                  width: int = 440, height: int = 260) -> str:
    """A histogram as inline SVG (bars carry ``data-count``; counts from :func:`numpy.histogram`).

    Hand-written instead of matplotlib: the batch report is rebuilt with the index after every
    case, and a matplotlib figure costs about 0.3 s to draw; this costs well under a millisecond.
    """
    import numpy as np

    data = np.asarray(values, dtype=float)
    counts, edges = np.histogram(data, bins=min(20, max(5, len(data))))
    left, right, top, bottom = 44, 28, 26, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(int(counts.max()), 1)
    span = float(edges[-1] - edges[0]) or 1.0

    def x_of(value: float) -> float:
        return left + (value - float(edges[0])) / span * plot_w

    def y_of(count: float) -> float:
        return top + plot_h - count / peak * plot_h

    parts = [f'<svg class="histogram" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="13">'
             f"{_esc(title)} (n = {len(data)})</text>"]
    edge_text = tick_labels(edges)
    for n, count in enumerate(counts):
        x0, x1 = x_of(float(edges[n])), x_of(float(edges[n + 1]))
        parts.append(f'<rect x="{x0:.1f}" y="{y_of(count):.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                     f'height="{top + plot_h - y_of(count):.1f}" fill="#4a90d9" '
                     f'data-count="{int(count)}"><title>{_esc(edge_text[n])} .. '
                     f'{_esc(edge_text[n + 1])}: {int(count)}</title></rect>')
    base = top + plot_h
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" '
                 'stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#333"/>')
    for tick in sorted({0, peak // 2, peak}):
        parts.append(f'<text x="{left - 6}" y="{y_of(tick) + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{tick}</text>')
    ticks = np.linspace(float(edges[0]), float(edges[-1]), 5)
    for value, text in zip(ticks, tick_labels(ticks), strict=True):
        parts.append(f'<text x="{x_of(float(value)):.1f}" y="{base + 15}" text-anchor="middle" '
                     f'font-size="11">{_esc(text)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" '
                 f'font-size="12">{_esc(xlabel)}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="12" '
                 f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">cases</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_batch_report(rows: Iterable[Mapping[str, Any]], columns: Sequence[str],
                        reports: Iterable[str] = (), title: str = "medscan batch report") -> str:
    """The batch report page: counts, histograms, the index table.

    Parameters
    ----------
    rows : iterable of mapping
        ``index.csv`` rows.
    columns : sequence of str
        Index columns to show, in order (``case_id`` first).
    reports : iterable of str
        Case ids that have a ``report.html`` (their ids link to it).
    title : str
        Page heading.

    Returns
    -------
    str
        A complete HTML5 document without external resources.
    """
    rows = list(rows)
    have_report = set(reports)
    ok = [r for r in rows if r.get("status") == "ok"]
    n_failed = sum(r.get("status") == "failed" for r in rows)
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p>{len(rows)} case(s): {len(ok)} ok, {n_failed} failed.</p>"]
    figures = []
    for key, name, xlabel in HISTOGRAMS:
        values = [v for v in (_number(r.get(key)) for r in ok) if v is not None]
        if values:
            figures.append(histogram_svg(values, name, xlabel))
    if figures:
        parts.append("<h2>Distributions (finished cases)</h2>")
        parts.append('<div class="hist">' + "".join(figures) + "</div>")
    parts.append("<h2>Cases</h2>")
    head = "".join(f'<th class="name">{_esc(c)}</th>' if i == 0 else f"<th>{_esc(c)}</th>"
                   for i, c in enumerate(columns))
    body = []
    for r in sorted(rows, key=lambda r: (r.get("status") != "failed", str(r.get("case_id")))):
        cells = []
        for i, c in enumerate(columns):
            number = _number(r.get(c)) if i and c in INDEX_DECIMALS else None
            # the index's own text (format_index_cell), also for rows not read from index.csv
            text = _esc(r.get(c, "") if number is None else format_index_cell(c, number))
            if i == 0 and str(r.get(c)) in have_report:
                text = f'<a href="{quote(str(r.get(c)))}/{REPORT}">{text}</a>'
            kind = "name" if i == 0 else "text" if number is None else "num"
            cells.append(f'<td class="{kind}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(f'<div class="wide"><table>\n<tr>{head}</tr>\n' + "\n".join(body)
                 + "\n</table></div>")
    return _page(title, "\n".join(parts))


def write_batch_report(output: str | Path, rows: Iterable[Mapping[str, Any]] | None = None,
                       columns: Sequence[str] | None = None) -> Path:
    """Atomically write ``output/report.html`` (see :func:`render_batch_report`).

    Parameters
    ----------
    output : str or Path
        The batch output folder.
    rows : iterable of mapping, optional
        The index rows (default: read ``output/index.csv``).
    columns : sequence of str, optional
        Columns to show (default: those of the rows, in order).

    Returns
    -------
    Path
        ``output/report.html``.
    """
    import csv

    root = Path(output)
    if rows is None:
        with open(root / INDEX, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else ["case_id", "status"]
    reports = [str(r.get("case_id")) for r in rows
               if r.get("case_id") and (root / str(r["case_id"]) / REPORT).is_file()]
    return write_text(root / REPORT, render_batch_report(rows, columns, reports))
