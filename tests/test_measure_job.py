"""``medscan measure``: re-measure case folders (after editing labels) and NIfTI pairs.

Every number is checked against NumPy on the NIfTI files the test itself wrote (nibabel), never
against medscan's own functions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from medscan.ct.job import run_segment
from medscan.ct.measure_job import run_measure
from medscan.io import read_index

MEDSCAN = [sys.executable, "-m", "medscan.cli"]
LUNG_RIGHT, LUNG_LEFT, BONE = 7, 8, 5


def _config(name: str, **overrides) -> dict:
    args = [f"{k}={v}" for k, v in overrides.items()]
    with initialize_config_module(config_module="medscan_conf", version_base="1.3"):
        cfg = compose(name, overrides=args)
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory) -> Path:
    """The embedded sample run through ``medscan segment`` once (a batch folder)."""
    out = tmp_path_factory.mktemp("segment") / "out"
    assert run_segment(_config("segment", output=out, progress=False)) == 0
    return out


def _batch_copy(segmented: Path, dst: Path) -> tuple[Path, Path]:
    """A private copy of the batch folder and its one case folder."""
    shutil.copytree(segmented, dst, ignore=shutil.ignore_patterns(".*"))
    (case,) = [p for p in dst.iterdir() if (p / "manifest.json").is_file()]
    return dst, case


def _nifti(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def _edit_labels(case: Path) -> np.ndarray:
    """Erase the upper half (along S) of the left lung and give it to soft tissue (4)."""
    lab, img = _nifti(case / "labels.nii.gz")
    lab = lab.copy()
    ijk = np.argwhere(lab == LUNG_LEFT)
    s = nib.affines.apply_affine(img.affine, ijk)[:, 2]
    cut = ijk[s > np.median(s)]
    lab[tuple(cut.T)] = 4
    nib.save(nib.Nifti1Image(lab, img.affine, img.header), str(case / "labels.nii.gz"))
    return lab


def _reference(case: Path, label: int) -> dict[str, float]:
    """Volume, mean HU and band counts of one label by NumPy on the NIfTI files."""
    lab, img = _nifti(case / "labels.nii.gz")
    hu, _ = _nifti(case / "volume.nii.gz")
    values = hu[lab == label].astype(np.float64)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return {"voxels": values.size, "ml": values.size * voxel_ml, "mean": values.mean(),
            "inflated": int(np.count_nonzero((values >= -950) & (values < -750)))}


def test_remeasure_untouched_case_gives_the_same_metrics(segmented, tmp_path):
    out, case = _batch_copy(segmented, tmp_path / "out")
    before = json.loads((case / "metrics.json").read_text())
    assert run_measure(_config("measure", input=out)) == 0
    after = json.loads((case / "metrics.json").read_text())
    assert after == before  # the job and `segment` compute metrics.json the same way
    assert after["structures"]["lung_left"]["surface_area_mm2"] > 0


def test_rerun_after_editing_labels_gives_new_numbers(segmented, tmp_path):
    out, case = _batch_copy(segmented, tmp_path / "out")
    before = json.loads((case / "metrics.json").read_text())
    _edit_labels(case)
    assert run_measure(_config("measure", input=case)) == 0
    after = json.loads((case / "metrics.json").read_text())
    ref = _reference(case, LUNG_LEFT)
    assert after["lung_left_ml"] < 0.6 * before["lung_left_ml"]
    assert after["lung_left_ml"] == pytest.approx(ref["ml"], abs=1e-3)
    assert after["structures"]["lung_left"]["mean_hu"] == pytest.approx(ref["mean"], abs=1e-3)
    assert after["density_bands"]["lung_left"]["bands"]["inflated"]["voxels"] == ref["inflated"]
    right = _reference(case, LUNG_RIGHT)
    assert after["lung_volume_ml"] == pytest.approx(ref["ml"] + right["ml"], abs=2e-3)
    assert after["lung_right_ml"] == before["lung_right_ml"]
    # the edited label's mesh is stale: no area, a finding; the untouched ones keep theirs
    assert after["structures"]["lung_left"]["surface_area_mm2"] is None
    assert after["structures"]["bone"]["surface_area_mm2"] == \
        before["structures"]["bone"]["surface_area_mm2"]
    qc = json.loads((case / "qc.json").read_text())
    stale = [f for f in qc["segmentation_findings"] if f["code"] == "mesh_stale"]
    assert stale and stale[0]["details"]["structures"] == ["lung_left"]
    # index.csv follows
    (row,) = read_index(out)
    assert float(row["lung_volume_ml"]) == pytest.approx(after["lung_volume_ml"], abs=0.01)


def test_nifti_pair_with_a_foreign_label_table(segmented, tmp_path):
    """A label map made by another tool: its own ids and names."""
    _out, case = _batch_copy(segmented, tmp_path / "src")
    lab, img = _nifti(case / "labels.nii.gz")
    foreign = np.zeros_like(lab)
    foreign[lab == LUNG_RIGHT], foreign[lab == LUNG_LEFT], foreign[lab == BONE] = 21, 22, 40
    nib.save(nib.Nifti1Image(foreign, img.affine), str(tmp_path / "seg.nii.gz"))
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"21": "lung_right", "22": {"name": "lung_left",
                                                            "color": [1, 2, 3]}, "40": "ribs"}))
    out = tmp_path / "measured"
    code = run_measure(_config("measure", volume=case / "volume.nii.gz",
                               labels=tmp_path / "seg.nii.gz", label_table=table, output=out,
                               case_id="foreign"))
    assert code == 0
    metrics = json.loads((out / "foreign" / "metrics.json").read_text())
    assert set(metrics["structures"]) == {"lung_right", "lung_left", "ribs"}
    ref = {k: _reference(case, v)["ml"] for k, v in (("r", LUNG_RIGHT), ("l", LUNG_LEFT))}
    assert metrics["lung_right_ml"] == pytest.approx(ref["r"], abs=1e-3)
    assert metrics["lung_volume_ml"] == pytest.approx(ref["r"] + ref["l"], abs=2e-3)
    assert metrics["structures"]["ribs"]["voxels"] == np.count_nonzero(lab == BONE)
    manifest = json.loads((out / "foreign" / "manifest.json").read_text())
    assert manifest["labels"]["22"] == {"name": "lung_left", "color": [1, 2, 3]}
    assert str(tmp_path) not in (out / "foreign" / "manifest.json").read_text()
    assert [r["case_id"] for r in read_index(out)] == ["foreign"]


def test_bad_case_is_named_and_the_rest_is_measured(segmented, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    _, good = _batch_copy(segmented, tmp_path / "a")
    shutil.move(str(good), out / good.name)
    good = out / good.name
    bad = out / "broken-case"
    shutil.copytree(good, bad)
    (bad / "labels.nii.gz").write_bytes(b"not a nifti")
    _edit_labels(good)
    code = run_measure(_config("measure", input=out))
    err = capsys.readouterr().err
    assert code == 1
    assert "broken-case" in err and "labels.nii.gz" in err
    assert str(tmp_path) not in err
    ref = _reference(good, LUNG_LEFT)
    metrics = json.loads((good / "metrics.json").read_text())
    assert metrics["lung_left_ml"] == pytest.approx(ref["ml"], abs=1e-3)


def test_label_map_on_another_grid_is_refused(segmented, tmp_path, capsys):
    _out, case = _batch_copy(segmented, tmp_path / "src")
    lab, img = _nifti(case / "labels.nii.gz")
    nib.save(nib.Nifti1Image(lab[:, :, 1:], img.affine), str(tmp_path / "short.nii.gz"))
    code = run_measure(_config("measure", volume=case / "volume.nii.gz",
                               labels=tmp_path / "short.nii.gz", output=tmp_path / "m"))
    assert code == 1
    assert "short.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "m" / "short").exists()


def test_shards_measure_every_case_once(segmented, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("case-a", "case-b", "case-c"):
        _, case = _batch_copy(segmented, tmp_path / name)
        shutil.move(str(case), out / name)
    seen = []
    for shard in (0, 1):
        assert run_measure(_config("measure", input=out, shard=shard, num_shards=2)) == 0
        seen += [line.split(":")[1].strip() for line in capsys.readouterr().err.splitlines()
                 if line.startswith("medscan measure: case-")]
    assert sorted(seen) == ["case-a", "case-b", "case-c"]


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([*MEDSCAN, "measure", f"input={tmp_path}/missing"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    proc = subprocess.run([*MEDSCAN, "measure", f"labels={tmp_path}"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "volume=" in proc.stderr


def test_lone_case_folder_leaves_its_parent_alone(segmented, tmp_path):
    """A case folder outside any batch: measured, and nothing written beside it."""
    _, case = _batch_copy(segmented, tmp_path / "src")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.move(str(case), lone / "case")
    _edit_labels(lone / "case")
    assert run_measure(_config("measure", input=lone / "case")) == 0
    assert sorted(p.name for p in lone.iterdir()) == ["case"]
    ref = _reference(lone / "case", LUNG_LEFT)
    metrics = json.loads((lone / "case" / "metrics.json").read_text())
    assert metrics["lung_left_ml"] == pytest.approx(ref["ml"], abs=1e-3)
