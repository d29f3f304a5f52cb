"""Issue 11's fault examples on the real shared series: what the loader makes of each.

Prints JSON. To compare with an older medscan, export its ``medscan`` package and put it first
on the path (run from outside the repository so the editable install does not win)::

    git archive <commit> medscan | tar -x -C /tmp/old
    cd /tmp && PYTHONPATH=/tmp/old REPO/.venv/bin/python REPO/benchmarks/dicom_realworld.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import dicom_inputs as gen  # noqa: E402  (the generators of the tests)

import medscan  # noqa: E402
from medscan.dicom import discover, load  # noqa: E402

B40F = REPO.parent / "shared" / "data" / "ct" / "lungdx-a0002-b40f"


def lung_ml(vol: Any) -> tuple[float, str]:
    """Lung volume (mL) by medscan's segmentation, and its reason when there is none."""
    from medscan.ct.segment import segment
    from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, default_tissues

    tissues = default_tissues()
    seg = segment(vol, tissues)
    ids = [tissues[LUNG_LEFT].label, tissues[LUNG_RIGHT].label]
    return round(float(np.isin(seg.labels, ids).sum() * vol.voxel_volume_ml), 1), seg.reason


def main() -> None:
    """Build each input under a temporary folder, load it, print what came out."""
    out: dict[str, Any] = {"code": str(Path(medscan.__file__).parent)}
    work = Path(tempfile.mkdtemp())

    def run(name: str, fn: Callable[[], Any]) -> None:
        try:
            out[name] = fn()
        except Exception as exc:  # an escaped exception is a result here
            out[name] = f"EXCEPTION {type(exc).__name__}: {str(exc)[:200]}"

    clean = load(discover(B40F).series[0])
    run("clean_lung_ml", lambda: lung_ml(clean)[0])

    def deflate() -> Any:
        gen.deflated_series(B40F, work / "defl", n=30)
        found = discover(work / "defl")
        return {"series": len(found.series),
                "other": [[f.code for f in s.findings] for s in found.other_series]}

    def overlay() -> Any:
        n = gen.overlay_bits_series(B40F, work / "ovl", n=30)
        vol = load(discover(work / "ovl").series[0])
        diff = np.asarray(vol.hu, np.int32) - np.asarray(clean.hu, np.int32)
        return {"voxels_bit12": n, "voxels_wrong": int((diff != 0).sum()),
                "max_diff_hu": int(np.abs(diff).max()), "lung_ml": lung_ml(vol)[0]}

    def phases() -> Any:
        gen.two_acquisitions(B40F, work / "ph", n=30)
        found = discover(work / "ph")
        return {"volumes": [s.n_slices for s in found.series],
                "codes": sorted({f.code for s in found.series for f in s.findings})}

    def localizer() -> Any:
        gen.with_localizer(B40F, work / "loc", n=30)
        found = discover(work / "loc")
        return {"cases": [s.n_slices for s in found.series],
                "other": [s.n_slices for s in found.other_series]}

    def lying() -> Any:
        gen.lying_sizes(B40F, work / "ly")
        found = discover(work / "ly")
        return {"series_shapes": [list(s.shape) for s in found.series],
                "skipped": len(found.skipped)}

    def latin() -> Any:
        from medscan.batch import hash_inputs

        gen.latin1_name(B40F, work / "lat", n=30)
        found = discover(work / "lat")
        return {"series": len(found.series),
                "hash": hash_inputs(found.series[0].files, work / "lat")[1][:12]}

    def stray() -> Any:
        gen.with_stray_modality(B40F, work / "stray", n=30)
        found = discover(work / "stray")
        return {"ct_series": [s.n_slices for s in found.series],
                "other": [(s.modality, s.n_slices) for s in found.other_series]}

    def enhanced() -> Any:
        gen.enhanced_ct(B40F, work / "enh", n=30)
        series = discover(work / "enh").series[0]
        result: dict[str, Any] = {"codes": [f.code for f in series.findings]}
        result["equal_to_single_frame"] = bool(np.array_equal(load(series).hu, clean.hu))
        return result

    def one_slice() -> Any:
        gen.one_thin_slice(B40F, work / "one")
        ml, reason = lung_ml(load(discover(work / "one").series[0]))
        return {"lung_ml": ml, "reason": reason}

    for name, fn in [("1_deflate", deflate), ("2_overlay", overlay), ("3_two_phases", phases),
                     ("3_localizer", localizer), ("4_lying_sizes", lying), ("5_latin1", latin),
                     ("19.3_stray_mr", stray), ("enhanced_ct", enhanced),
                     ("one_slice", one_slice)]:
        run(name, fn)
    shutil.rmtree(work)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
