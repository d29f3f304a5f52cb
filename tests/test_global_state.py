"""No hidden global state (issue 13): the CLI leaves ``sys.argv`` alone, plots leave the
matplotlib backend alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from medscan.cli import main as cli_main


@pytest.mark.parametrize("args", [
    ["train", "--cfg", "job", "seed=123"],              # Hydra prints the config and returns
    ["segment", "--help"],                               # Hydra's help: SystemExit(0) inside
    ["train", "--cfg", "job", "no_such_key_here=1"],     # Hydra's error: SystemExit(1) inside
])
def test_cli_main_leaves_sys_argv_unchanged(args, monkeypatch, capsys):
    before = ["caller.py", "--caller-flag", "x"]
    monkeypatch.setattr(sys, "argv", list(before))
    rc = cli_main(list(args))
    assert sys.argv == before
    out = capsys.readouterr()
    if "seed=123" in args:
        assert rc == 0
        assert "seed: 123" in out.out  # the overrides did reach Hydra
    if "no_such_key_here=1" in args:
        assert rc != 0


_RENDER_BOTH = textwrap.dedent("""
    import sys
    from pathlib import Path

    import matplotlib
    matplotlib.use("svg")
    import numpy as np

    import medscan.ct.render
    import medscan.xray.metrics
    assert matplotlib.get_backend() == "svg", "import changed it"

    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p = np.clip(0.3 * y + 0.7 * rng.random(40), 0, 1)
    written = medscan.xray.metrics.save_plots(y, p, 0.5, out / "plots")
    assert len(written) == 4 and all(w.stat().st_size > 0 for w in written)
    assert matplotlib.get_backend() == "svg", "X-ray plots changed it"

    from medscan.ct.tissues import default_tissues
    tissues = default_tissues()
    hu = np.full((20, 30, 30), -1000, np.int16)
    labels = np.zeros(hu.shape, np.uint8)
    labels[5:15, 5:25, 5:25] = tissues["soft_tissue"].label
    png = medscan.ct.render.render_preview(hu, labels, np.diag([1.0, 1.0, 2.0, 1.0]), tissues,
                                           {}, out / "preview.png", dpi=40)
    assert png.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    assert matplotlib.get_backend() == "svg", "CT preview changed it"
    print("backend kept:", matplotlib.get_backend())
""")


def test_plots_keep_the_callers_matplotlib_backend(tmp_path):
    """A process that chose the svg backend still has it after an X-ray plot and a CT preview
    (both PNGs written). Own process: switching the backend of pytest's is not ours to do."""
    run = subprocess.run([sys.executable, "-c", _RENDER_BOTH, str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "backend kept: svg" in run.stdout
