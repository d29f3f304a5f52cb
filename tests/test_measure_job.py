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


# --- issue 14 fixes (fresh-eyes defects D1, D4, D6, D7, D12) ---------------------------------

SECRET = "fix14a-test-secret-0123456789abcdef"


def _private_values(value, found: list) -> list:
    """Every string in a JSON value that is an absolute path."""
    if isinstance(value, dict):
        for v in value.values():
            _private_values(v, found)
    elif isinstance(value, list):
        for v in value:
            _private_values(v, found)
    elif isinstance(value, str) and value.startswith(("/", "~")):
        found.append(value)
    return found


def _texts(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text(errors="replace")
            for p in folder.rglob("*") if p.suffix in (".json", ".csv", ".html")}


def test_no_job_writes_the_salt_or_an_absolute_path(segmented, tmp_path, sample_ct):
    """segment, measure (case folder) and measure (pair) with salt=: fingerprint only."""
    from medscan.dicom.identity import secret_fingerprint

    seg_out = tmp_path / "seg"
    assert run_segment(_config("segment", input=sample_ct, output=seg_out, progress=False,
                               salt=SECRET, mesh_formats="[ply]")) == 0
    _, case = _batch_copy(segmented, tmp_path / "batch")
    assert run_measure(_config("measure", input=case, salt=SECRET)) == 0
    pair = tmp_path / "pair"
    assert run_measure(_config("measure", volume=case / "volume.nii.gz",
                               labels=case / "labels.nii.gz", output=pair, salt=SECRET)) == 0
    for root in (seg_out, case, pair):
        manifests = list(root.rglob("manifest.json"))
        assert manifests, root
        for path in manifests:
            manifest = json.loads(path.read_text())
            assert not set(manifest["config"]) & {"salt", "input", "output", "volume",
                                                  "labels", "label_table", "scratch"}
            assert _private_values(manifest, []) == [], path
        for name, text in _texts(root).items():
            assert SECRET not in text, name
            assert str(tmp_path) not in text, name
    fingerprint = secret_fingerprint(SECRET)
    for root in (seg_out, pair):
        (path,) = root.rglob("manifest.json")
        assert json.loads(path.read_text())["id_secret_fingerprint"] == fingerprint


def test_provenance_drops_private_keys_for_any_caller():
    """The one place: whoever builds a Provenance, its config has no private key."""
    from medscan.case import PRIVATE_KEYS, Provenance

    config = {k: f"/archive/{k}" for k in PRIVATE_KEYS} | {"salt": SECRET, "level": 3}
    for made in (Provenance(config=dict(config)),
                 Provenance.for_files([], dict(config), salt=SECRET)):
        assert made.config == {"level": 3}
        assert made.manifest_fields()["config"] == {"level": 3}
        made.config = dict(config)  # replaced afterwards: still dropped when written
        assert made.manifest_fields()["config"] == {"level": 3}
    plain = Provenance.for_files([], {"level": 3}, salt=SECRET)
    assert Provenance.for_files([], dict(config), salt=SECRET).config_hash == plain.config_hash


def test_pair_case_is_named_by_a_pseudonym_not_the_file_name(segmented, tmp_path, capsys):
    _, case = _batch_copy(segmented, tmp_path / "src")
    named = tmp_path / "DOE^JOHN_12345.nii.gz"
    shutil.copy(case / "labels.nii.gz", named)
    out = tmp_path / "m"
    for _ in range(2):  # the same files give the same id (a rerun rewrites the same folder)
        assert run_measure(_config("measure", volume=case / "volume.nii.gz", labels=f"'{named}'",
                                   output=out)) == 0
        (folder,) = [p for p in out.iterdir() if p.is_dir()]
        assert folder.name.startswith("ct-") and len(folder.name) == 13
    for name, text in _texts(out).items():
        assert "DOE" not in text and "12345" not in text, name
    assert "DOE" not in capsys.readouterr().err  # the row is named by the case id
    # a case_id= that is no plain folder name is refused before any work
    for bad in ("../up", ".hidden", "a/b"):
        assert run_measure(_config("measure", volume=case / "volume.nii.gz",
                                   labels=case / "labels.nii.gz", output=out,
                                   case_id=f"'{bad}'")) == 2
        assert "case_id" in capsys.readouterr().err
    # other labels on the same volume: another case, not an overwrite
    lab, img = _nifti(case / "labels.nii.gz")
    lab = lab.copy()
    lab[lab == LUNG_LEFT] = 4
    nib.save(nib.Nifti1Image(lab, img.affine), str(named))
    assert run_measure(_config("measure", volume=case / "volume.nii.gz", labels=f"'{named}'",
                               output=out)) == 0
    assert len([p for p in out.iterdir() if p.is_dir()]) == 2


def _foreign(case: Path, tmp_path: Path, keep: dict[int, int], table: dict) -> tuple[Path, Path]:
    """A label map with ``{our label: its id}`` and its table file."""
    lab, img = _nifti(case / "labels.nii.gz")
    out = np.zeros_like(lab)
    for ours, theirs in keep.items():
        out[lab == ours] = theirs
    nib.save(nib.Nifti1Image(out, img.affine), str(tmp_path / "seg.nii.gz"))
    (tmp_path / "table.json").write_text(json.dumps(table))
    return tmp_path / "seg.nii.gz", tmp_path / "table.json"


def _pair(case: Path, labels: Path, table: Path | None, out: Path) -> int:
    extra = {"label_table": table} if table else {}
    return run_measure(_config("measure", volume=case / "volume.nii.gz", labels=labels,
                               output=out, case_id="c", **extra))


def test_pair_manifest_records_the_label_table_used(segmented, tmp_path):
    _, case = _batch_copy(segmented, tmp_path / "src")
    labels, table = _foreign(case, tmp_path, {LUNG_RIGHT: 3, LUNG_LEFT: 2, BONE: 1},
                             {"1": "body", "2": "lung_left", "3": "lung_right"})
    assert _pair(case, labels, table, tmp_path / "m") == 0
    manifest = json.loads((tmp_path / "m" / "c" / "manifest.json").read_text())
    used = {k: v["name"] for k, v in manifest["config"]["tissues"].items()}
    assert used == {"1": "body", "2": "lung_left", "3": "lung_right"}
    assert manifest["config"]["tissues"] == manifest["labels"]
    assert "table.json" not in json.dumps(manifest)


def test_empty_label_map_is_a_failed_case(segmented, tmp_path, capsys):
    _, case = _batch_copy(segmented, tmp_path / "src")
    labels, table = _foreign(case, tmp_path, {}, {"1": "lung_right", "2": "lung_left"})
    assert _pair(case, labels, table, tmp_path / "m") == 1
    manifest = json.loads((tmp_path / "m" / "c" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "empty" in manifest["reason"]
    qc = json.loads((tmp_path / "m" / "c" / "qc.json").read_text())
    assert [f["code"] for f in qc["segmentation_findings"]][:1] == ["labels_empty"]
    assert read_index(tmp_path / "m")[0]["status"] == "failed"
    assert "c: failed (the label map is empty" in capsys.readouterr().err


def test_lung_table_without_lung_voxels_fails_like_segment(segmented, tmp_path):
    _, case = _batch_copy(segmented, tmp_path / "src")
    labels, table = _foreign(case, tmp_path, {BONE: 40},
                             {"21": "lung_right", "22": "lung_left", "40": "ribs"})
    assert _pair(case, labels, table, tmp_path / "m") == 1
    folder = tmp_path / "m" / "c"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["reason"].startswith("no lungs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["lung_volume_ml"] is None
    lab, _ = _nifti(case / "labels.nii.gz")
    assert metrics["structures"]["ribs"]["voxels"] == np.count_nonzero(lab == BONE)


def test_table_without_lungs_measures_the_structures(segmented, tmp_path):
    """Not a failure: no lung is expected; the finding says what is measured instead."""
    _, case = _batch_copy(segmented, tmp_path / "src")
    labels, table = _foreign(case, tmp_path, {BONE: 40, 4: 41}, {"40": "ribs", "41": "muscle"})
    assert _pair(case, labels, table, tmp_path / "m") == 0
    folder = tmp_path / "m" / "c"
    assert json.loads((folder / "manifest.json").read_text())["status"] == "ok"
    qc = json.loads((folder / "qc.json").read_text())
    (info,) = [f for f in qc["segmentation_findings"] if f["code"] == "no_lung_labels"]
    assert info["severity"] == "info" and "structures" in info["message"]
    metrics = json.loads((folder / "metrics.json").read_text())
    lab, _ = _nifti(case / "labels.nii.gz")
    assert metrics["structures"]["muscle"]["voxels"] == np.count_nonzero(lab == 4)
    assert metrics["lung_volume_ml"] is None


def test_bad_label_maps_are_explained(segmented, tmp_path, capsys):
    _, case = _batch_copy(segmented, tmp_path / "src")
    lab, img = _nifti(case / "labels.nii.gz")
    bad = lab.copy()
    bad[:2, :2, :2] = 42
    nib.save(nib.Nifti1Image(bad, img.affine), str(tmp_path / "badid.nii.gz"))
    nib.save(nib.Nifti1Image(lab[..., None], img.affine), str(tmp_path / "four.nii.gz"))
    assert _pair(case, tmp_path / "badid.nii.gz", None, tmp_path / "m") == 1
    err = capsys.readouterr().err
    assert "label value(s) 42 are not in the label table" in err and "np." not in err
    assert _pair(case, tmp_path / "four.nii.gz", None, tmp_path / "m") == 1
    err = capsys.readouterr().err
    assert "four.nii.gz: a label map must be 3-D (x, y, z)" in err
    assert "axes don't match" not in err


def test_truncated_labels_in_a_batch_named_once_and_case_kept(segmented, tmp_path, capsys):
    out, case = _batch_copy(segmented, tmp_path / "out")
    data = (case / "labels.nii.gz").read_bytes()
    (case / "labels.nii.gz").write_bytes(data[: len(data) // 2])
    before = {p.name: p.read_bytes() for p in case.iterdir() if p.is_file()}
    assert run_measure(_config("measure", input=out)) == 1
    err = capsys.readouterr().err
    where = f"{case.name}/labels.nii.gz"
    assert where in err and err.count("Compressed file ended") == 1
    assert f"{case.name}: error" in err
    assert {p.name: p.read_bytes() for p in case.iterdir() if p.is_file()} == before


def test_stale_mesh_stays_stale_on_a_second_remeasure(segmented, tmp_path):
    _, case = _batch_copy(segmented, tmp_path / "out")
    _edit_labels(case)
    assert run_measure(_config("measure", input=case)) == 0
    assert run_measure(_config("measure", input=case)) == 0
    metrics = json.loads((case / "metrics.json").read_text())
    assert metrics["structures"]["lung_left"]["surface_area_mm2"] is None
    qc = json.loads((case / "qc.json").read_text())
    assert any(f["code"] == "mesh_stale" for f in qc["segmentation_findings"])


def _set_labels(case: Path, lab: np.ndarray) -> None:
    img = nib.load(str(case / "labels.nii.gz"))
    nib.save(nib.Nifti1Image(lab, img.affine, img.header), str(case / "labels.nii.gz"))


def _told(out: Path, case: Path) -> dict[str, tuple[str, str]]:
    """``(status, reason)`` as the manifest, index.csv, read_case and both reports tell it."""
    from medscan.io import read_case

    manifest = json.loads((case / "manifest.json").read_text())
    (row,) = read_index(out)
    back = read_case(case, arrays=False)
    told = {"manifest": (manifest["status"], manifest["reason"]),
            "index": (row["status"], row["reason"]), "read_case": (back.status, back.reason)}
    pages = (("case report", case / "report.html"), ("batch report", out / "report.html"))
    for name, page in pages:
        text = page.read_text()
        told[name] = ("failed" if 'class="status failed"' in text or "0 ok, 1 failed" in text
                      else "ok" if 'class="status ok"' in text or "1 ok, 0 failed" in text
                      else "?", "")
    return told


@pytest.mark.parametrize("erase", ["lungs", "everything"])
def test_remeasure_that_fails_is_told_by_every_file(segmented, tmp_path, erase):
    """An ok case whose lung labels were erased (napari): failed in manifest, index, reports."""
    out, case = _batch_copy(segmented, tmp_path / "out")
    original = json.loads((case / "manifest.json").read_text())
    assert original["status"] == "ok"
    lab, _ = _nifti(case / "labels.nii.gz")
    edited = lab.copy()
    if erase == "lungs":
        edited[(lab == LUNG_LEFT) | (lab == LUNG_RIGHT)] = 4
    else:
        edited[:] = 0
    _set_labels(case, edited)
    assert run_measure(_config("measure", input=out)) == 1
    told = _told(out, case)
    assert {k: v[0] for k, v in told.items()} == dict.fromkeys(told, "failed")
    reason = told["manifest"][1]
    assert reason.startswith("no lungs" if erase == "lungs" else "the label map is empty")
    assert told["index"][1] == told["read_case"][1] == reason
    manifest = json.loads((case / "manifest.json").read_text())
    # provenance of the segmentation kept; the re-measure recorded
    for key in ("inputs", "input_hash", "config_hash", "config", "created", "meshes", "labels"):
        assert manifest[key] == original[key], key
    assert manifest["measured"]["by"] == "medscan measure"
    assert len(manifest["measured"]["config_hash"]) == 64
    # painted back (the original labels): ok again, everywhere
    _set_labels(case, lab)
    assert run_measure(_config("measure", input=out)) == 0
    told = _told(out, case)
    assert {k: v[0] for k, v in told.items()} == dict.fromkeys(told, "ok")
    assert told["manifest"][1] == told["index"][1] == told["read_case"][1] == ""
    qc = json.loads((case / "qc.json").read_text())
    assert not [f for f in qc["segmentation_findings"] if f["severity"] == "error"]


def _kept_warning(caplog, case: Path) -> str:
    """The segment job's one warning about ``case`` being kept."""
    (message,) = [r.getMessage() for r in caplog.records
                  if r.getMessage().startswith(f"case {case.name} kept: ")]
    return message


def test_segment_rerun_keeps_a_hand_fixed_case(segmented, tmp_path, caplog):
    """Failed by a re-measure, fixed by hand, re-measured ok: a segment rerun keeps the edits."""
    out, case = _batch_copy(segmented, tmp_path / "out")
    lab, _ = _nifti(case / "labels.nii.gz")
    erased = lab.copy()
    erased[(lab == LUNG_LEFT) | (lab == LUNG_RIGHT)] = 4
    _set_labels(case, erased)
    assert run_measure(_config("measure", input=out)) == 1
    _set_labels(case, lab)  # the user paints the lungs back, not quite as segment did:
    edited = _edit_labels(case)  # the upper half of the left lung stays soft tissue
    assert run_measure(_config("measure", input=out)) == 0
    assert json.loads((case / "manifest.json").read_text())["status"] == "ok"
    assert run_segment(_config("segment", output=out, progress=False)) == 0
    kept, _ = _nifti(case / "labels.nii.gz")
    assert np.array_equal(kept, edited) and not np.array_equal(kept, lab)
    assert json.loads((case / "manifest.json").read_text())["measured"]["by"] == "medscan measure"
    assert "re-measured with medscan measure; ok" in _kept_warning(caplog, case)


def test_segment_rerun_never_replaces_a_case_failed_by_a_hand_edit(segmented, tmp_path, caplog):
    """B1: lungs erased by hand + re-measured (failed): kept byte-equal, exit 1; overwrite redoes.

    The manifest records the SHA-256 of the labels.nii.gz it describes (checked by hashlib).
    """
    import hashlib

    out, case = _batch_copy(segmented, tmp_path / "out")
    original = (case / "labels.nii.gz").read_bytes()
    manifest = json.loads((case / "manifest.json").read_text())
    assert manifest["labels_sha256"] == hashlib.sha256(original).hexdigest()
    lab, _ = _nifti(case / "labels.nii.gz")
    erased = lab.copy()
    erased[(lab == LUNG_LEFT) | (lab == LUNG_RIGHT)] = 0
    _set_labels(case, erased)
    edited = (case / "labels.nii.gz").read_bytes()
    assert run_measure(_config("measure", input=case)) == 1
    manifest = json.loads((case / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["labels_sha256"] == hashlib.sha256(edited).hexdigest()
    metrics = (case / "metrics.json").read_bytes()

    assert run_segment(_config("segment", output=out, progress=False)) == 1
    assert (case / "labels.nii.gz").read_bytes() == edited  # the edit survives, byte for byte
    assert (case / "metrics.json").read_bytes() == metrics
    warning = _kept_warning(caplog, case)
    assert "edited by hand (re-measured with medscan measure; failed (no lungs" in warning
    assert "overwrite=true re-segments it" in warning
    (row,) = read_index(out)
    assert row["status"] == "failed"

    caplog.clear()
    assert run_segment(_config("segment", output=out, progress=False, overwrite=True)) == 0
    assert (case / "labels.nii.gz").read_bytes() == original  # segment is deterministic
    manifest = json.loads((case / "manifest.json").read_text())
    assert manifest["status"] == "ok" and "measured" not in manifest
    assert manifest["labels_sha256"] == hashlib.sha256(original).hexdigest()
    assert not [r for r in caplog.records if " kept: " in r.getMessage()]


def test_labels_edited_but_not_remeasured_are_stale(segmented, tmp_path, caplog, capsys):
    """B2: a hand edit without ``medscan measure``: told by segment (exit 1) and read_case."""
    from medscan.io import read_case

    out, case = _batch_copy(segmented, tmp_path / "out")
    assert read_case(case, arrays=False).findings == read_case(segmented / case.name,
                                                               arrays=False).findings
    lab, _ = _nifti(case / "labels.nii.gz")
    edited = lab.copy()
    edited[lab == LUNG_RIGHT] = 0
    _set_labels(case, edited)
    edited_bytes = (case / "labels.nii.gz").read_bytes()
    codes = [f.code for f in read_case(case, arrays=False).findings]
    assert "labels_edited" in codes

    assert run_segment(_config("segment", output=out, progress=False)) == 1
    assert (case / "labels.nii.gz").read_bytes() == edited_bytes
    warning = _kept_warning(caplog, case)
    assert "NOT re-measured" in warning and "medscan measure input=" in warning
    assert "unchanged inputs and config" not in capsys.readouterr().err

    # measured: the metrics describe the labels again, the finding goes, the rerun keeps it ok
    assert run_measure(_config("measure", input=case)) == 0
    assert "labels_edited" not in [f.code for f in read_case(case, arrays=False).findings]
    qc = json.loads((case / "qc.json").read_text())
    assert "labels_edited" not in [f["code"] for f in qc["segmentation_findings"]]
    caplog.clear()
    assert run_segment(_config("segment", output=out, progress=False)) == 0
    assert (case / "labels.nii.gz").read_bytes() == edited_bytes
    assert "re-measured with medscan measure; ok" in _kept_warning(caplog, case)


def test_unedited_case_is_still_skipped(segmented, tmp_path, caplog, capsys):
    """The other side: labels as segment wrote them -> "skipped: unchanged", exit 0."""
    out, case = _batch_copy(segmented, tmp_path / "out")
    manifest = (case / "manifest.json").read_bytes()
    assert run_segment(_config("segment", output=out, progress=False)) == 0
    err = capsys.readouterr().err
    assert "unchanged inputs and config" in err and "0 ok, 0 failed, 1 skipped" in err
    assert (case / "manifest.json").read_bytes() == manifest
    assert not [r for r in caplog.records if " kept: " in r.getMessage()]


def test_segment_no_lungs_is_lifted_only_when_lungs_are_painted():
    """``segment``'s own ``no_lungs`` (and failures a re-measure cannot lift) decide the status."""
    from medscan.ct.measure_job import _replace_findings, remeasured_status
    from medscan.volume import Finding

    seg = Finding("no_lungs", "error", "no lungs: no air-containing region")
    still = Finding("no_lungs", "error", "no lungs: the label table names lung_right")
    assert remeasured_status(_replace_findings([seg], [still])) == ("failed", seg.message)
    assert remeasured_status(_replace_findings([seg], [])) == ("ok", "")
    seg_failed = Finding("output_failed", "error", "outputs=[dicom_seg] not written: x")
    assert remeasured_status(_replace_findings([seg, seg_failed], [])) == \
        ("failed", seg_failed.message)
    warn = Finding("mesh_stale", "warning", "stale")
    assert remeasured_status(_replace_findings([], [warn])) == ("ok", "")
