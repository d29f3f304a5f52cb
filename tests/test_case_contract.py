"""The case contract (issue 13): analyse -> CaseResult -> write_case / read_case.

* the Python API (``analyse`` + ``write_case`` with the default options) and the CLI
  (``medscan segment`` with its defaults) write the same files with equal metrics and labels,
  and the API's case is current for a rerun of the job on the same tree;
* ``LabelMap`` carries its geometry and label table through NIfTI (checked with nibabel);
* the stored config and qc.json hold no absolute path, in a tree named like a patient;
* one source of defaults: the dataclasses take every default from ``conf/segment.yaml``.
"""

from __future__ import annotations

import dataclasses
import errno
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medscan.case import CaseResult, Provenance
from medscan.ct.analyse import CaseOptions, analyse, case_config
from medscan.ct.mesh import MeshParams
from medscan.ct.segment import SegmentParams
from medscan.dicom import load_path
from medscan.io import read_case, read_index, write_case
from medscan.io.layout import INDEX_COLUMNS, INDEX_DECIMALS
from medscan.io.redact import FileRefs, relative_paths
from medscan.volume import Finding, Label, LabelMap, Volume

MEDSCAN = [sys.executable, "-m", "medscan.cli"]
CONF = Path(__file__).resolve().parent.parent / "conf"


def _files(case: Path) -> set[str]:
    return {str(p.relative_to(case)) for p in case.rglob("*") if p.is_file()}


def _segment(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDSCAN, "segment", *args, "progress=false"], capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def api_and_cli(sample_ct, tmp_path_factory):
    """The sample written with the defaults by the Python API and by the CLI."""
    root = tmp_path_factory.mktemp("contract")
    r = _segment(f"input={sample_ct}", f"output={root / 'cli'}")
    assert r.returncode == 0, r.stderr
    volume = load_path(sample_ct, uniform=True)  # the job's default load (uniform=true)
    options = CaseOptions.defaults()
    result = analyse(volume, options)
    provenance = Provenance.for_volume(volume, case_config(options, uniform=True))
    case = write_case(result, root / "api", provenance, mesh_formats=options.mesh_formats,
                      outputs=options.outputs)
    return root, case, root / "cli" / volume.case_id, result


def test_api_and_cli_write_the_same_case(api_and_cli):
    _, api, cli, result = api_and_cli
    assert api.name == cli.name and _files(api) == _files(cli)
    assert {"volume.nii.gz", "labels.nii.gz", "metrics.json", "qc.json", "preview.png",
            "manifest.json", "meshes/lung_left.glb"} <= _files(api)
    metrics = [json.loads((c / "metrics.json").read_text()) for c in (api, cli)]
    assert metrics[0] == metrics[1] and metrics[0]["lung_volume_ml"] > 0
    labels = [np.asarray(nib.load(c / "labels.nii.gz").dataobj) for c in (api, cli)]
    assert labels[0].dtype == np.uint8 and np.array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(labels[0], result.labels.array.transpose(2, 1, 0))
    manifests = [json.loads((c / "manifest.json").read_text()) for c in (api, cli)]
    for key in ("config_hash", "input_hash", "inputs", "labels", "status",
                "id_secret_fingerprint", "coordinate_space", "series"):
        assert manifests[0][key] == manifests[1][key], key
    assert set(manifests[0]) == set(manifests[1])  # the same fields, series included
    series = manifests[0]["series"]
    assert series["n_slices"] == 30 and series["modality"] == "CT"
    assert series["patient_id"].startswith("pt-") and series["metadata"]["Manufacturer"]
    assert "SeriesDescription" not in series["metadata"]  # free text stays out by default
    assert [(m["tissue"], m["format"], m["faces"]) for m in manifests[0]["meshes"]] == \
        [(m["tissue"], m["format"], m["faces"]) for m in manifests[1]["meshes"]]
    qc = [json.loads((c / "qc.json").read_text()) for c in (api, cli)]
    assert qc[0] == qc[1]


def test_orthogonal_nifti_keeps_its_qform(api_and_cli):
    """An untilted series: qform and sform both set (ITK reads the same grid as nibabel) and
    no sheared_affine finding (the tilted head CT: tests/test_segment_job.py)."""
    import SimpleITK as sitk

    _, case, _, _ = api_and_cli
    img = nib.load(case / "labels.nii.gz")
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    itk = sitk.ReadImage(str(case / "labels.nii.gz"))
    direction = np.array(itk.GetDirection()).reshape(3, 3) * np.array(itk.GetSpacing())
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ direction, img.affine[:3, :3], atol=1e-4)
    codes = [f["code"] for f in json.loads((case / "qc.json").read_text())[
        "segmentation_findings"]]
    assert "sheared_affine" not in codes


def test_index_numbers_have_one_format(api_and_cli, tmp_path):
    """index.csv: each number column with its own fixed decimals (INDEX_DECIMALS: mL 2, HU 1,
    % 3, s 2), the same in every row, equal to metrics.json / the manifest to that precision;
    the batch report's index table shows the same text."""
    root, _, cli, _ = api_and_cli
    (row,) = read_index(root / "cli")
    metrics = json.loads((cli / "metrics.json").read_text())
    numeric = [k for k, v in metrics.items() if k in row and isinstance(v, float)]
    assert len(numeric) >= 6
    assert set(INDEX_DECIMALS) <= set(INDEX_COLUMNS) and set(numeric) <= set(INDEX_DECIMALS)
    for key in [*numeric, "seconds"]:
        decimals = INDEX_DECIMALS[key]
        assert re.fullmatch(rf"-?\d+\.\d{{{decimals}}}", row[key]), (key, row[key])
        ref = metrics[key] if key in metrics else json.loads(
            (cli / "manifest.json").read_text())["seconds"]
        assert float(row[key]) == pytest.approx(ref, abs=0.5 * 10 ** -decimals + 1e-9), key
    out = tmp_path / "fmt"
    for n, values in enumerate([
        {"lung_volume_ml": 4486.0, "lung_left_ml": 2363.878, "perc15_hu": -945,
         "mean_lung_hu": -845.26, "laa950_percent": 13.414, "lung_complete": True},
        {"lung_volume_ml": 5613.5812, "lung_left_ml": 0.004, "perc15_hu": -944.75,
         "mean_lung_hu": -0.04, "laa950_percent": 2.0, "lung_complete": False},
    ]):
        case = _small_result(f"fmt{n}")
        case.metrics = values
        write_case(case, out, Provenance(seconds=6.163 + n), mesh_formats=[])
    rows = read_index(out)
    keys = ("lung_volume_ml", "lung_left_ml", "perc15_hu", "mean_lung_hu", "laa950_percent",
            "lung_complete", "seconds")
    assert [[r[k] for k in keys] for r in rows] == [
        ["4486.00", "2363.88", "-945.0", "-845.3", "13.414", "True", "6.16"],
        ["5613.58", "0.00", "-944.8", "0.0", "2.000", "False", "7.16"]]
    page = (out / "report.html").read_text()
    for r in rows:  # the batch report's table: the index's text, cell for cell
        for k in keys:
            assert f">{r[k]}</td>" in page, (k, r[k])


def test_api_case_is_current_for_a_job_rerun(api_and_cli, sample_ct):
    root, api, _, _ = api_and_cli
    before = (api / "manifest.json").read_bytes()
    r = _segment(f"input={sample_ct}", f"output={root / 'api'}")
    assert r.returncode == 0, r.stderr
    (row,) = read_index(root / "api")
    assert "1 skipped" in r.stderr and row["status"] == "ok"
    assert (api / "manifest.json").read_bytes() == before  # not redone


def test_read_case_gives_back_the_result(api_and_cli):
    _, api, _, result = api_and_cli
    back = read_case(api, meshes=True)
    assert back.status == result.status and back.metrics == json.loads(
        json.dumps(back.metrics))
    assert np.array_equal(back.labels.array, result.labels.array)
    assert back.labels.labels == result.labels.labels
    np.testing.assert_allclose(back.labels.affine, result.volume.affine, atol=1e-5)
    assert np.array_equal(back.volume.hu, result.volume.hu)
    assert set(back.surfaces) == set(result.surfaces)
    for name, mesh in back.surfaces.items():
        assert len(mesh.faces) == len(result.surfaces[name].faces)
    assert back.provenance.config_hash == back.manifest["config_hash"]
    assert [f.code for f in back.findings] == [f.code for f in result.findings]


def test_label_map_geometry_and_table(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 4, size=(5, 6, 7), dtype=np.uint8)
    affine = np.array([[0.0, 0.7, 0, -100], [-0.7, 0.0, 0, 50], [0, 0, 2.5, 10], [0, 0, 0, 1]])
    table = {1: Label(1, "fat", (240, 200, 120)), 2: Label(2, "lung_left", (1, 2, 3)),
             3: Label(3, "bone", (250, 250, 250))}
    lm = LabelMap(array, affine, table, case_id="c")
    assert lm.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert lm.voxel_volume_ml == pytest.approx(2.5 * 0.7 * 0.7 / 1000)
    assert np.array_equal(lm.mask("bone"), array == 3)
    assert LabelMap.table_from_dict(json.loads(json.dumps(lm.labels_dict()))) == table
    path = lm.to_nifti(tmp_path / "labels.nii.gz")
    img = nib.load(path)  # independent reader: RAS affine, x-fastest data
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, np.diag([-1, -1, 1, 1]) @ affine, atol=1e-6)
    assert np.array_equal(np.asarray(img.dataobj), array.transpose(2, 1, 0))
    back = LabelMap.from_nifti(path, lm.labels_dict())
    assert np.array_equal(back.array, array) and back.labels == table
    assert back.same_grid(Volume(np.zeros((5, 6, 7), np.int16), affine))
    with pytest.raises(ValueError, match="uint8"):
        LabelMap(array.astype(np.int16), affine)
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)),
             tmp_path / "float.nii.gz")
    with pytest.raises(ValueError, match="not a label map"):
        LabelMap.from_nifti(tmp_path / "float.nii.gz")


def test_spacing_is_derived_after_resampling(shared_ct_qa):
    """An unevenly spaced series resampled on load: the written geometry has one spacing."""
    volume = load_path(shared_ct_qa, uniform=True)
    assert "resampled" in {f.code for f in volume.findings}
    assert "spacing_mm" not in volume.metadata  # no stored copy that could disagree
    step = next(f for f in volume.findings if f.code == "resampled").details["step_mm"]
    assert volume.spacing[0] == pytest.approx(step, rel=1e-6)


def test_manifest_holds_no_second_geometry(shared_ct_qa, tmp_path):
    """The resampled series' case: the grid is the NIfTI's only (read back with nibabel)."""
    r = _segment(f"input={shared_ct_qa}", f"output={tmp_path}", "preview=false",
                 "mesh_labels=[]")
    (case,) = [p for p in tmp_path.iterdir() if (p / "manifest.json").is_file()]
    manifest = json.loads((case / "manifest.json").read_text())
    assert r.returncode in (0, 1), r.stderr
    assert not {"shape", "spacing", "affine"} & set(manifest["series"]), manifest["series"]
    assert "spacing_mm" not in manifest["series"]["metadata"]
    img = nib.load(case / "volume.nii.gz")
    qc = json.loads((case / "qc.json").read_text())
    step = next(f for f in qc["loader_findings"] if f["code"] == "resampled")["details"]
    assert img.header.get_zooms()[2] == pytest.approx(step["step_mm"], rel=1e-5)
    assert img.shape[2] == step["n_slices"]


def test_no_absolute_path_in_config_or_qc(sample_ct, tmp_path):
    """A tree named like a patient: manifest config and qc.json findings are path-free."""
    tree = tmp_path / "DOE^JOHN 1957-03-02" / "CT chest"
    shutil.copytree(sample_ct, tree)
    volume = load_path(tree, uniform=True)
    volume.findings.append(Finding(
        "odd_slice", "warning", f"slice {volume.files[3]} looks odd (under {tree})",
        files=[volume.files[3]], details={"file": volume.files[3]}))
    options = CaseOptions.defaults()
    options.mesh_labels, options.preview = ["lung_left"], False
    result = analyse(volume, options)
    config = {**case_config(options, uniform=True), "reference": str(tree / "notes.txt"),
              "elsewhere": "/srv/archive/DOE^JOHN"}
    provenance = Provenance.for_files(volume.files, config, case_config=case_config(options),
                                      root=tree.parent)
    case = write_case(result, tmp_path / "out", provenance, mesh_formats=["ply"])
    for name in ("manifest.json", "qc.json"):
        text = (case / name).read_text()
        assert "DOE^JOHN" not in text and str(tmp_path) not in text, name
    manifest = json.loads((case / "manifest.json").read_text())
    assert manifest["config"]["reference"] == "CT chest/notes.txt"
    assert manifest["config"]["elsewhere"] == "<path>"
    (odd,) = [f for f in json.loads((case / "qc.json").read_text())["loader_findings"]
              if f["code"] == "odd_slice"]
    assert odd["files"][0].startswith("slice 3 sha256:")
    assert odd["details"]["file"].startswith("slice 3 sha256:")
    assert relative_paths({"a": [str(tree)]}, tree) == {"a": ["."]}


def test_file_refs_are_stable_under_a_second_pass(sample_ct):
    """The job names files by reference for its log, then write_case redacts again: a
    reference stays the same reference (it used to become "file (unreadable)")."""
    files = sorted(str(f) for f in sample_ct.glob("*.dcm"))
    refs = FileRefs(files, sample_ct)
    found = [Finding("gap", "warning", f"gap after {files[2]}", files=[files[2], files[3]],
                     details={"file": files[3]})]
    once = refs.findings(found)
    assert once[0].files[0].startswith("slice 2 sha256:")
    for again in (refs.findings(once), FileRefs(files, sample_ct).findings(once),
                  FileRefs([], None).findings(once)):
        assert [f.to_dict() for f in again] == [f.to_dict() for f in once]


def test_job_manifest_config_has_no_absolute_path(sample_ct, tmp_path):
    tree = tmp_path / "SMITH^ANNA"
    shutil.copytree(sample_ct, tree / "series")
    r = _segment(f"input='{tree}'", f"output={tmp_path / 'out'}", f"scratch={tmp_path / 'scr'}",
                 "preview=false", "mesh_labels=[lung_left]", "mesh_formats=[ply]")
    assert r.returncode == 0, r.stderr
    (case,) = [p for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")
               and p.is_dir()]
    for name in ("manifest.json", "qc.json"):
        text = (case / name).read_text()
        assert "SMITH" not in text and str(tmp_path) not in text, name
    config = json.loads((case / "manifest.json").read_text())["config"]
    assert not {"input", "output", "salt", "scratch"} & set(config)
    assert config["uniform"] is True and config["mesh_formats"] == ["ply"]


def test_defaults_come_from_the_yaml_only():
    cfg = yaml.safe_load((CONF / "segment.yaml").read_text())
    for cls, section in ((SegmentParams, "segment"), (MeshParams, "mesh")):
        assert {f.name for f in dataclasses.fields(cls)} == set(cfg[section]), cls
        assert cls() == cls.from_config(cfg[section])
        # no literal default in the class body: every default is read from the YAML
        body = inspect.getsource(cls).split('"""', 2)[2]
        for line in body.splitlines():
            if re.match(r"    \w+: [^=]+=", line):
                assert "_YAML[" in line, line
    options = CaseOptions.defaults()
    for key in ("mesh_labels", "mesh_formats", "min_slices", "preview", "outputs"):
        assert getattr(options, key) == cfg[key], key
    assert case_config(options)["segment"] == SegmentParams.from_config(cfg["segment"]).to_dict()


def test_measure_defaults_have_one_source():
    """Both jobs take the ``measure`` block from conf/metrics/default.yaml (their defaults
    lists), and MeasureOptions / lung_coverage default to that same file: no literal copies."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from medscan.ct.measure import MeasureOptions, lung_coverage

    block = yaml.safe_load((CONF / "metrics" / "default.yaml").read_text())
    for job in ("segment", "measure"):
        assert "measure" not in yaml.safe_load((CONF / f"{job}.yaml").read_text()), job
        with initialize_config_dir(str(CONF.resolve()), version_base=None):
            cfg = OmegaConf.to_container(compose(job), resolve=False)
        assert cfg["measure"] == block, job
        assert MeasureOptions.from_config(cfg) == MeasureOptions(), job
    options = MeasureOptions()
    assert {k: getattr(options, k) for k in block} == block
    assert inspect.signature(lung_coverage).parameters["min_contact_cm2"].default is None
    assert CaseOptions.defaults().measure == options



def test_optional_output_failure_keeps_the_other_outputs(sample_ct, tmp_path):
    """outputs=[nifti,dicom_seg] for a volume without its DICOM files (read from NIfTI): the
    SEG cannot be made, so the case is failed with an output_failed finding naming it, and
    every other file is written as without the SEG (volume, labels, metrics, meshes,
    preview, findings); a writer's leftovers are removed."""
    from medscan.io.case import OUTPUT_WRITERS

    loaded = load_path(sample_ct, uniform=True)
    loaded.to_nifti(tmp_path / "ct.nii.gz")
    volume = Volume.from_nifti(tmp_path / "ct.nii.gz", case_id="nifti-case")
    assert not volume.files
    options = CaseOptions.defaults()
    options.mesh_labels = ["lung_left"]
    result = analyse(volume, options)
    assert result.status == "ok"
    plain = write_case(result, tmp_path / "plain", Provenance(), mesh_formats=["ply"])
    case = write_case(result, tmp_path / "seg", Provenance(), mesh_formats=["ply"],
                      outputs=["nifti", "dicom_seg"])
    assert _files(case) == _files(plain) and not (case / "seg.dcm").exists()
    manifest = json.loads((case / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "dicom_seg" in manifest["reason"]
    assert "source DICOM" in manifest["reason"]
    assert (case / "metrics.json").read_bytes() == (plain / "metrics.json").read_bytes()
    qc, qc_plain = (json.loads((c / "qc.json").read_text()) for c in (case, plain))
    assert qc["segmentation_findings"][:-1] == qc_plain["segmentation_findings"]
    failed = qc["segmentation_findings"][-1]
    assert failed["code"] == "output_failed" and failed["severity"] == "error"
    assert failed["details"]["output"] == "dicom_seg"
    assert result.status == "ok" and not any(f.code == "output_failed" for f in result.findings)
    (row,) = read_index(tmp_path / "seg")
    assert row["status"] == "failed" and row["lung_volume_ml"]

    def leaves_a_part(result, folder, prov):
        (folder / "extra").mkdir()
        (folder / "extra" / "part.bin").write_bytes(b"x")
        raise ValueError("refused")

    OUTPUT_WRITERS["part"] = leaves_a_part
    try:
        case = write_case(result, tmp_path / "part", Provenance(), mesh_formats=["ply"],
                          outputs=["nifti", "part"])
    finally:
        del OUTPUT_WRITERS["part"]
    assert _files(case) == _files(plain) and not (case / "extra").exists()


def _small_result(case_id: str, status: str = "ok") -> CaseResult:
    """A tiny synthetic case (the writer's mechanics do not need a real series)."""
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    labels = LabelMap((hu > 0).astype(np.uint8), affine, {1: Label(1, "dense", (9, 9, 9))},
                      case_id)
    return CaseResult(case_id, status, "" if status == "ok" else "broken",
                      volume=Volume(hu, affine, case_id), labels=labels, metrics={"n": 1})


def test_write_case_is_atomic_and_keeps_an_ok_case(tmp_path, monkeypatch):
    """A writer that fails leaves the old case and no temporary folder; a failed result of the
    same inputs does not replace an ok case; the extension point takes new outputs."""
    from medscan.io.case import OUTPUT_WRITERS, write_case_folder

    provenance = Provenance(input_hash="same")
    case = write_case(_small_result("c1"), tmp_path, provenance, mesh_formats=[])
    before = {p: (case / p).read_bytes() for p in _files(case)}
    assert set(before) == {"volume.nii.gz", "labels.nii.gz", "metrics.json", "qc.json",
                           "report.html", "manifest.json"}

    def boom(result, folder, prov):
        (folder / "partial.bin").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    def nifti_boom(result, folder, prov):
        (folder / "partial.bin").write_bytes(b"x")
        raise RuntimeError("cannot write the volume")

    monkeypatch.setitem(OUTPUT_WRITERS, "boom", boom)
    with pytest.raises(OSError, match="No space"):  # the output folder broke: no case at all
        write_case(_small_result("c1"), tmp_path, provenance, outputs=["nifti", "boom"])
    monkeypatch.setitem(OUTPUT_WRITERS, "nifti", nifti_boom)  # a required output
    with pytest.raises(RuntimeError, match="cannot write the volume"):
        write_case(_small_result("c1"), tmp_path, provenance)
    monkeypatch.undo()
    assert {p: (case / p).read_bytes() for p in _files(case)} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    write = write_case_folder(_small_result("c1", "failed"), tmp_path, provenance)
    assert write.kept and not write.committed
    assert json.loads((case / "manifest.json").read_text())["status"] == "ok"

    def extra(result, folder, prov):
        (folder / "extra.txt").write_text(result.case_id)
        return ["extra.txt"]

    monkeypatch.setitem(OUTPUT_WRITERS, "extra", extra)
    case2 = write_case(_small_result("c2"), tmp_path, Provenance(), outputs=["extra"])
    assert (case2 / "extra.txt").read_text() == "c2" and not (case2 / "volume.nii.gz").exists()
    with pytest.raises(ValueError, match="unknown output"):
        write_case(_small_result("c3"), tmp_path, Provenance(), outputs=["nope"])
    assert not (tmp_path / "c3").exists()
    assert [r["case_id"] for r in read_index(tmp_path)] == ["c1", "c2"]


@pytest.mark.parametrize(("column", "value", "text"), [
    ("perc15_hu", -945, "-945.0"), ("mean_lung_hu", -0.04, "0.0"), ("seconds", 0.005, "0.01"),
    ("laa950_percent", float("nan"), ""), ("lung_left_ml", None, ""),
    ("lung_complete", False, "False"), ("reason", "no lungs", "no lungs"),
])
def test_index_cell_text(column, value, text):
    from medscan.io.layout import format_index_cell

    assert format_index_cell(column, value) == text
