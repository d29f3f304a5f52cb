"""Issue 15 (performance): the cheap paths give the same results as the full ones.

No timing asserts here (benchmarks/end_to_end.py measures); these tests prove that the fast
paths (static ``--help``, lazy SciPy, no config composition for given inputs) change nothing a
user sees.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

from medscan.cli import HYDRA_JOBS, static_help
from medscan.cli import main as cli_main


def _hydra_help(job: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The help Hydra itself prints for ``job`` (the job module's ``main`` with ``--help``)."""
    module = importlib.import_module(f"medscan_jobs.{job}")
    argv = sys.argv
    sys.argv = [f"medscan {job}", "--help"]
    try:
        with pytest.raises(SystemExit):
            module.main()
    finally:
        sys.argv = argv
    return capsys.readouterr().out


@pytest.mark.parametrize("job", list(HYDRA_JOBS))
def test_static_help_is_hydras_help(job, capsys):
    text = static_help(job)
    if text is None:
        pytest.skip(f"{job}'s help template has placeholders: Hydra prints it")
    assert cli_main([job, "--help"]) == 0
    fast = capsys.readouterr().out
    assert fast == text + "\n"
    assert fast == _hydra_help(job, capsys)


def test_help_and_cpu_backend_import_no_scipy_or_hydra():
    code = (
        "import sys\n"
        "from medscan.cli import main\n"
        "assert main(['segment', '--help']) == 0\n"
        "assert 'hydra' not in sys.modules, 'hydra imported for --help'\n"
        "from medscan.backend import get_backend\n"
        "be = get_backend('cpu')\n"
        "assert 'scipy' not in sys.modules, 'scipy imported by the cpu backend'\n"
        "import numpy as np\n"
        "lab, n = be.ndi.label(np.array([1, 0, 1]))\n"
        "assert n == 2 and 'scipy.ndimage' in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_lazy_ndimage_is_scipy_ndimage():
    import scipy.ndimage as ndi

    from medscan.backend import get_backend

    be = get_backend("cpu")
    assert be.ndi.binary_erosion is ndi.binary_erosion
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    assert np.array_equal(be.ndi.binary_erosion(mask), ndi.binary_erosion(mask))


@pytest.mark.parametrize("value", ["[a,b]", "${oc.env:HOME}", "null"])
def test_inputs_hydra_must_parse_are_still_composed(value, tmp_path, capsys, monkeypatch):
    """Values the fast input check cannot judge go through Hydra's composition as before."""
    monkeypatch.chdir(tmp_path)
    from medscan import cli

    called = []
    monkeypatch.setattr(cli, "_check_path", lambda *a: called.append(a))
    cli.check_inputs("segment", [f"input={value}", "output=out"], multirun=False)
    if value == "null":
        assert called == []  # null: the embedded sample, nothing to check
    else:
        assert called  # composed and checked
