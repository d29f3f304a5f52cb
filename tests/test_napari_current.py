"""A case saved from the napari CT segmentation widget is a case like the job's (issue 13).

The widget and ``medscan segment`` must agree on what a case is: same analysis, same writer,
same provenance (input hash and config hash). Then a ``medscan segment`` rerun on the same DICOM
tree finds the napari-saved case current and leaves it alone, and a case saved with other HU
bands is redone.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("napari")


def _segment(tree: Path, output: Path) -> subprocess.CompletedProcess:
    """The real CLI: ``medscan segment input=TREE output=OUTPUT``."""
    return subprocess.run(
        [sys.executable, "-m", "medscan.cli", "segment", f"input={tree}", f"output={output}",
         "progress=false"],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _row(stderr: str, case_id: str) -> str:
    """The summary table's row of ``case_id`` (rich draws it with box characters)."""
    rows = [line for line in stderr.splitlines() if case_id in line and "│" in line]
    assert len(rows) == 1, stderr[-3000:]
    return re.sub(r"\s+", " ", rows[0])


def _snapshot(case_dir: Path) -> dict[str, tuple[str, int, int]]:
    """Every file of a case folder: content hash, mtime (ns) and inode; the folder's inode too."""
    out = {".": ("", case_dir.stat().st_mtime_ns, case_dir.stat().st_ino)}
    for path in sorted(p for p in case_dir.rglob("*") if p.is_file()):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(case_dir))] = (digest, st.st_mtime_ns, st.st_ino)
    return out


def _run_widget(widget, qtbot) -> None:
    before = widget.result
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.result is not before, timeout=600_000)
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)


@pytest.mark.napari
@pytest.mark.slow
def test_napari_saved_case_is_current_for_segment_rerun(
    make_napari_viewer, qtbot, sample_ct, tmp_path
):
    """Widget run + save on a DICOM tree, then ``medscan segment`` on the same tree: skipped.

    With other HU bands on the sliders the saved case is not current: the rerun redoes it with
    the job's bands (so "current" is earned by equal provenance, not granted to any napari case).
    """
    tree = tmp_path / "tree"
    shutil.copytree(sample_ct, tree / "archive" / "series-a")
    output = tmp_path / "out"

    viewer = make_napari_viewer(show=True)
    (ct,) = viewer.open(str(tree), plugin="medscan")
    _, widget = viewer.window.add_plugin_dock_widget("medscan", "CT segmentation")
    assert widget.layer_combo.value is ct
    _run_widget(widget, qtbot)
    case_dir = widget.save(output)
    case_id = case_dir.name
    manifest = json.loads((case_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok", manifest.get("reason")
    assert manifest["case_id"] == case_id
    before = _snapshot(case_dir)

    proc = _segment(tree, output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = _row(proc.stderr, case_id)
    assert "skipped" in row and "unchanged inputs and config" in row, row
    assert "0 ok, 0 failed, 1 skipped" in proc.stderr, proc.stderr[-2000:]
    assert _snapshot(case_dir) == before  # not rewritten, not even touched

    # Other bands: a different config, so the job redoes the case with its own bands.
    widget.sliders["fat"].value = (-100, -29)
    _run_widget(widget, qtbot)
    widget.save(output)
    narrow = json.loads((case_dir / "manifest.json").read_text())
    assert narrow["config_hash"] != manifest["config_hash"]
    proc = _segment(tree, output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = _row(proc.stderr, case_id)
    assert " ok " in row and "skipped" not in row, row
    redone = json.loads((case_dir / "manifest.json").read_text())
    assert redone["config_hash"] == manifest["config_hash"]
    assert redone["series"] == manifest["series"]  # napari and the job: one series block
    assert redone["config"]["tissues"]["bands"]["fat"]["hu"] != [-100, -29]
