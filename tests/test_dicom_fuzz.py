"""Issue 19: a bounded mutation fuzz of the public DICOM loader API on real slices.

Runs ``benchmarks/fuzz_dicom.py`` (the same engine as the long runs in ``docs/reliability.md``)
on a few thousand seeded inputs in child processes and asserts on its report: no exception other
than SeriesError escapes ``discover``/``load``, no input takes over 10 s, no returned volume has a
non-finite voxel or affine (or a singular affine), and no fuzzing process dies (a dead one is
what a batch killed by a decoder crash looks like).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "benchmarks" / "fuzz_dicom.py"
N_INPUTS = 2000


@pytest.mark.slow
def test_fuzz_loader_api(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    r = subprocess.run(
        [sys.executable, str(FUZZ), "--n", str(N_INPUTS), "--jobs", "2", "--chunk", "1000",
         "--seed", "7", "--hang-s", "10", "--out", str(out), "--save", str(tmp_path / "bugs")],
        capture_output=True, text=True, timeout=1200,
    )
    assert out.is_file(), r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["inputs"] == N_INPUTS, report.get("deaths")
    assert not report["bugs"], json.dumps(report["bugs"][:5], indent=1)
    assert r.returncode == 0, r.stderr[-3000:]
    outcomes = report["outcomes"]
    # the fuzzer reaches both ends: inputs that still load and inputs that are refused
    assert outcomes.get("loaded", 0) > 0
    assert sum(v for k, v in outcomes.items() if k.startswith("refused:")) > 0
    assert report["slowest_input_s"] < 10


def test_fuzz_inputs_are_reproducible() -> None:
    """Input i of seed s is always the same bytes (so a bug input can be rebuilt)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz_dicom", FUZZ)
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    seeds = fuzz.seed_series()
    a = [fuzz.make_input(seeds, i, 3) for i in range(6)]
    b = [fuzz.make_input(seeds, i, 3) for i in range(6)]
    assert a == b
    assert any(x[1] != seeds[i % len(seeds)][1] for i, x in enumerate(a))
