"""HTML reports (medscan.io.report) of a REAL `medscan segment` run on the embedded sample.

Checked like a reader would: the page parses with balanced tags, loads nothing from elsewhere,
embeds the case's own preview.png, shows every number of metrics.json (parsed back from the
HTML tables and compared with the JSON), escapes what comes from data and names no path.
"""

from __future__ import annotations

import base64
import html.parser
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medscan.batch import rebuild_index
from medscan.ct.job import run_segment
from medscan.io import iter_case_dirs
from medscan.io.report import REPORT, write_batch_report, write_case_report
from tests.test_segment_job import config

VOID = {"meta", "img", "br", "hr", "input", "link", "col", "source", "wbr"}


class Page(html.parser.HTMLParser):
    """Tags, attributes, table cells and text of a page; raises on unbalanced tags."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self.feed(text)
        self.close()
        assert self.stack == [], f"unclosed tags: {self.stack}"

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h2", "h3"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell or []).strip())
            self._cell = None
        elif tag in ("h2", "h3"):
            self.headings.append("".join(self._heading or []).strip())
            self._heading = None

    def handle_data(self, data):
        self.text.append(data)
        for sink in (self._cell, self._heading):
            if sink is not None:
                sink.append(data)

    def table_after(self, heading: str) -> dict[str, dict[str, str]]:
        """The table following an <h3> heading, as {row name: {column: cell}}."""
        index = [h for h in self.headings if h not in ("Preview", "Quality control",
                                                       "Measurements")].index(heading)
        rows = self.tables[index]
        head = rows[0]
        return {r[0]: dict(zip(head, r, strict=True)) for r in rows[1:]}


def assert_self_contained(page: Page, raw: str) -> None:
    for tag, attrs in page.tags:
        assert tag not in {"script", "link", "iframe", "object", "embed", "base"}, tag
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
        if "href" in attrs:
            assert "://" not in attrs["href"] and not attrs["href"].startswith("/"), attrs
    assert "url(" not in raw and "@import" not in raw


def close(cell: str, value: float) -> bool:
    """A cell shown with 2 decimals (3 significant digits below 0.01) equals ``value``."""
    return bool(np.isclose(float(cell), value, rtol=5e-3, atol=0.0051))


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, sample_ct) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("report") / "out"
    assert run_segment(config(output=out, progress=False)) == 0
    (case,) = iter_case_dirs(out)
    if not (case / REPORT).is_file():  # until write_case writes it itself
        write_case_report(case)
    return out, case


def test_case_report_shows_metrics_json(sample_run, sample_ct) -> None:
    out, case = sample_run
    raw = (case / REPORT).read_text(encoding="utf-8")
    page = Page(raw)
    assert_self_contained(page, raw)
    metrics = json.loads((case / "metrics.json").read_text())

    summary = page.table_after("Summary")
    numbers = {k: v for k, v in metrics.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numbers and set(numbers) <= set(summary)
    for key, value in numbers.items():
        assert close(summary[key]["value"], value), (key, summary[key], value)
    tissues = page.table_after("tissues")
    for name, stats in metrics["tissues"].items():
        for column, value in stats.items():
            if isinstance(value, int | float):
                assert close(tissues[name][column], value), (name, column)
            elif value is None:
                assert tissues[name][column] == "n/a"

    images = [a["src"] for t, a in page.tags if t == "img"]
    embedded = [base64.b64decode(s.split(",", 1)[1]) for s in images]
    assert (case / "preview.png").read_bytes() in embedded
    # the embedded images' base64 text can hold any short string by chance ("/tmp" in about
    # one preview of twenty): paths are looked for in the page without those data URIs
    text = re.sub(r"data:[^\"']*", "data:", raw)
    for path in (str(sample_ct), str(out), str(case), "/tmp", "/work"):
        assert path not in text


def test_case_report_findings_in_plain_words_and_escaped(sample_run, tmp_path) -> None:
    _, case = sample_run
    copy = tmp_path / case.name
    shutil.copytree(case, copy)
    qc = json.loads((copy / "qc.json").read_text())
    evil = {"code": "lung_truncated", "severity": "warning",
            "message": '<script>alert("x")</script> & <img src=http://x/y.png>', "files": [],
            "details": {}}
    qc["segmentation_findings"] = [*qc["segmentation_findings"], evil]
    (copy / "qc.json").write_text(json.dumps(qc))
    raw = write_case_report(copy).read_text(encoding="utf-8")
    page = Page(raw)
    assert_self_contained(page, raw)
    text = "".join(page.text)
    assert '<script>alert("x")</script> & <img src=http://x/y.png>' in text  # shown as text
    assert "A lung is cut off by the scanned range" in text
    for finding in qc["segmentation_findings"]:
        assert finding["message"] in text


def test_batch_report(sample_run, tmp_path) -> None:
    _, case = sample_run
    batch = tmp_path / "batch"
    batch.mkdir()
    for n in range(3):  # three copies of the case with different lung volumes
        copy = batch / f"{case.name}-{n}"
        shutil.copytree(case, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["case_id"] = copy.name
        (copy / "manifest.json").write_text(json.dumps(manifest))
        metrics = json.loads((copy / "metrics.json").read_text())
        metrics["lung_volume_ml"] += 100.0 * n
        (copy / "metrics.json").write_text(json.dumps(metrics))
    rebuild_index(batch)
    raw = write_batch_report(batch).read_text(encoding="utf-8")
    page = Page(raw)
    assert_self_contained(page, raw)
    rows = {r[0]: r for r in page.tables[-1][1:]}
    head = page.tables[-1][0]
    assert set(rows) == {f"{case.name}-{n}" for n in range(3)}
    volume = json.loads((case / "metrics.json").read_text())["lung_volume_ml"]
    for n in range(3):
        cell = rows[f"{case.name}-{n}"][head.index("lung_volume_ml")]
        assert close(cell, volume + 100.0 * n)
    links = [a["href"] for t, a in page.tags if t == "a"]
    assert {f"{case.name}-{n}/{REPORT}" for n in range(3)} <= set(links)
    # two histograms (lung volume, %LAA-950); bar counts equal NumPy's on the metrics
    bars = [int(a["data-count"]) for t, a in page.tags if t == "rect"]
    assert sum(bars) == 2 * 3
    laa = json.loads((case / "metrics.json").read_text())["laa950_percent"]
    expected = [*np.histogram([volume + 100.0 * n for n in range(3)], bins=5)[0],
                *np.histogram([laa] * 3, bins=5)[0]]
    assert bars == [int(c) for c in expected]


@pytest.mark.slow
def test_case_report_in_headless_chromium(sample_run, tmp_path) -> None:
    """Opened in a real browser (offline), the report shows the embedded preview figure."""
    from PIL import Image

    from tests.test_newcomer import _browser

    _, case = sample_run
    page = (case / REPORT).as_uri()
    dom = _browser("--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Quality control" in dom.stdout and "Measurements" in dom.stdout
    shot = tmp_path / "report.png"
    r = _browser(f"--screenshot={shot}", "--window-size=1100,1400", page)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # the preview's orange left-lung mesh: absent when the embedded image fails to decode
    orange = ((red > 180) & (green > 100) & (green < 180) & (blue < 120)).sum()
    assert orange > 2000, f"the embedded preview did not render ({orange} orange pixels)"


def test_no_lungs_is_not_reported_as_cut_off(sample_run) -> None:
    """A case without lungs (lung metrics null) gets no 'lungs cut off' headline."""
    from medscan.io.report import render_case_report

    _, case = sample_run
    metrics = json.loads((case / "metrics.json").read_text())
    shown = render_case_report("c", "ok", metrics={**metrics, "lung_complete": False})
    assert "Lungs entirely in the scan" in shown
    none = {**metrics, "lung_volume_ml": None, "lung_complete": False}
    assert "Lungs entirely in the scan" not in render_case_report("c", "failed", metrics=none)
    assert "n/a (no lungs found)" in render_case_report("c", "failed", metrics=none)
    one = render_case_report("c", "ok", metrics={**metrics, "lung_left_ml": None})
    assert re.search(r'"v">n/a</div><div class="l">Left lung<', one)
    assert "None" not in one.split('<div class="cards">')[1].split("</div></div></div>")[0]


def test_histogram_ticks_are_distinct_for_one_value(sample_run) -> None:
    """One case (or several of one value): numpy's bins span the value +- 0.5; the axis labels
    used to print the same rounded number five times."""
    from medscan.io.report import histogram_svg

    _, case = sample_run
    volume = json.loads((case / "metrics.json").read_text())["lung_volume_ml"]
    for values in ([volume], [volume] * 3, [1000.0, 1250.0, 2000.0]):
        svg = histogram_svg(values, "Lung volume", "mL")
        x_ticks = re.findall(r'text-anchor="middle" font-size="11">([^<]*)<', svg)
        assert len(x_ticks) == 5 and len(set(x_ticks)) == 5, x_ticks
        assert float(x_ticks[0]) <= min(values) and float(x_ticks[-1]) >= max(values)
    assert x_ticks == ["1000", "1250", "1500", "1750", "2000"]  # no extra digits when unneeded
