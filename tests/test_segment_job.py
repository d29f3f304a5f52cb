"""``medscan segment`` on real data: the output contract, reruns, kills, shards, bad input."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from medscan.batch import sha256_file, shard_of
from medscan.ct.job import run_segment
from medscan.io import INDEX_COLUMNS, iter_case_dirs, read_case, read_index

MEDSCAN = [sys.executable, "-m", "medscan.cli"]
CHEST = ["lungdx-a0001-chest-5mm", "lungdx-a0002-b40f", "lungdx-a0002-b70f",
         "ricord-1a-000082-jpegll"]


def config(**overrides) -> dict:
    args = [f"{k}={v}" for k, v in overrides.items()]
    with initialize_config_module(config_module="medscan_conf", version_base="1.3"):
        cfg = compose("segment", overrides=args)
    return OmegaConf.to_container(cfg, resolve=True)


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDSCAN, "segment", *args], capture_output=True, text=True,
                          timeout=timeout)


def copy_series(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.dcm"):
        shutil.copy2(f, dst / f.name)


def case_for(output: Path, folder: Path) -> Path:
    """The case folder made from the series in ``folder`` (matched by the files' content
    hashes: manifests name no input paths)."""
    wanted = {sha256_file(f) for f in folder.glob("*.dcm")}
    for case in iter_case_dirs(output):
        digests = {i["sha256"] for i in read_case(case, arrays=False).manifest["inputs"]}
        if digests and digests <= wanted:
            return case
    raise AssertionError(f"no case for {folder} in {output}")


@pytest.fixture(scope="session")
def shared_run(shared_ct, tmp_path_factory):
    """One job over the four shared chest series (RICORD included), shared by the tests."""
    out = tmp_path_factory.mktemp("segment-shared")
    code = run_segment(config(input=shared_ct, output=out, progress=False))
    return out, code


@pytest.mark.slow
def test_shared_chest_series(shared_run, shared_ct):
    out, code = shared_run
    assert code == 0
    rows = read_index(out)
    assert len(rows) == 4 and list(rows[0]) == list(INDEX_COLUMNS)
    for row in rows:
        assert row["status"] == "ok", row
        left, right = float(row["lung_left_ml"]), float(row["lung_right_ml"])
        assert 800 < left < 4500 and 800 < right < 4500, row
        assert float(row["lung_volume_ml"]) == pytest.approx(left + right, abs=0.05)
        assert -900 < float(row["mean_lung_hu"]) < -600
        assert 0 <= float(row["laa950_percent"]) < 30
        assert -1000 < float(row["perc15_hu"]) < -800
    for case in iter_case_dirs(out):
        c = read_case(case, arrays=False)
        m = c.manifest
        assert m["coordinate_space"] == "LPS" and m["units"] == "mm"
        assert set(m["timings_s"]) >= {"load", "segment", "measure", "mesh", "write"}
        assert m["labels"]["8"]["name"] == "lung_left" and m["input_hash"] and m["config_hash"]
        assert [i["slice"] for i in m["inputs"]] == list(range(len(m["inputs"])))
        assert all(len(i["sha256"]) == 64 for i in m["inputs"])
        assert c.files["preview"].stat().st_size > 10_000
        assert set(c.files["meshes"]) == {"lung_left", "lung_right", "bone"}
        lungs = [e for e in m["meshes"] if e["tissue"].startswith("lung") and e["format"] == "ply"]
        for e in lungs:
            assert e["watertight"]
            ml = c.metrics["tissues"][e["tissue"]]["volume_ml"]
            assert abs(e["volume_ml"] - ml) / ml < 0.05, (case.name, e, ml)
        text = "".join(p.read_text() for p in case.glob("*.json"))
        assert "PatientName" not in text and "PatientID" not in text
        # no input path anywhere in the case's JSON (manifests name inputs by slice and hash)
        dcm_names = [f.name for f in (shared_ct / CHEST[0]).glob("*.dcm")]
        for name in [str(shared_ct), *CHEST, *dcm_names]:
            assert name not in text, name
        assert_files_named_by_slice(case)


@pytest.mark.slow
@pytest.mark.parametrize("series", ["lungdx-a0001-chest-5mm", "lungdx-a0002-b40f"])
def test_nifti_geometry_equals_dcm2niix(shared_run, shared_ct, tmp_path, series):
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix not installed (apt-get install dcm2niix)")
    out, _ = shared_run
    case = case_for(out, shared_ct / series)
    vol, lab = nib.load(case / "volume.nii.gz"), nib.load(case / "labels.nii.gz")
    assert np.array_equal(vol.affine, lab.affine) and vol.shape == lab.shape
    assert lab.get_data_dtype() == np.uint8
    subprocess.run([exe, "-z", "n", "-f", "ref", "-o", str(tmp_path), str(shared_ct / series)],
                   check=True, capture_output=True)
    ref = nib.as_closest_canonical(nib.load(tmp_path / "ref.nii"))
    mine = nib.as_closest_canonical(vol)
    np.testing.assert_allclose(mine.affine, ref.affine, atol=1e-3)
    assert np.array_equal(np.asarray(mine.dataobj), ref.get_fdata())


@pytest.mark.slow
def test_rerun_is_a_no_op(shared_run, shared_ct, capsys):
    out, _ = shared_run
    # .locks/<case>.lock records who holds a case (host, pid) each time it is taken: run state
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
              and ".hydra" not in p.parts and ".locks" not in p.parts
              and p.name not in ("index.csv", "index.html", ".index.lock")
              and p != out / "report.html"}  # the batch report is rebuilt with the index
    capsys.readouterr()
    assert run_segment(config(input=shared_ct, output=out, progress=False)) == 0
    err = capsys.readouterr().err
    assert "0 ok, 0 failed, 4 skipped" in err
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before
    assert len(read_index(out)) == 4


def test_sample_by_default_and_gpu_error(tmp_path):
    r = cli(f"output={tmp_path}", "progress=false")
    assert r.returncode == 0, r.stderr
    rows = read_index(tmp_path)
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert (tmp_path / ".hydra").is_dir()
    r = cli(f"output={tmp_path / 'gpu'}", "backend=gpu")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "backend=gpu" in lines[0], r.stderr


def test_head_ct_fails_with_reason_and_outputs(shared_ct_qa, tmp_path):
    r = cli(f"input={shared_ct_qa}", f"output={tmp_path}", "progress=false")
    assert r.returncode == 1, r.stderr
    (row,) = read_index(tmp_path)
    assert row["status"] == "failed" and "no lungs" in row["reason"]
    c = read_case(tmp_path / row["case_id"], arrays=False)
    assert c.metrics["lung_volume_ml"] is None and c.metrics["perc15_hu"] is None
    assert c.metrics["tissues"]["bone"]["volume_ml"] > 100
    assert {"volume", "labels", "preview"} <= set(c.files)
    assert "bone" in c.files["meshes"]
    assert any(f.code == "no_lungs" for f in c.findings)
    _assert_sheared_nifti(tmp_path / row["case_id"], c, shared_ct_qa)
    report = (tmp_path / row["case_id"] / "report.html").read_text()
    assert "n/a (no lungs found)" in report and "Lungs entirely in the scan" not in report
    # the uneven tilted series has gaps: missing_slices names the input files around them
    assert_files_named_by_slice(tmp_path / row["case_id"], min_files=2)


def _assert_sheared_nifti(case: Path, c, source: Path) -> None:
    """A gantry-tilted case: a sheared_affine warning with the header's tilt, and NIfTI files
    whose sform is the exact sheared affine with no qform, so SimpleITK refuses them instead
    of reading a rotated grid (5 % larger voxels)."""
    import pydicom
    import SimpleITK as sitk

    (note,) = [f for f in c.findings if f.code == "sheared_affine"]
    assert note.severity == "warning" and "ITK" in note.message
    first = sorted(source.rglob("*.dcm"))[0]
    tilt = float(pydicom.dcmread(first, stop_before_pixels=True).GantryDetectorTilt)
    assert note.details["shear_deg"] == pytest.approx(abs(tilt), abs=0.05)
    affine = nib.load(case / "volume.nii.gz").affine
    for name in ("volume.nii.gz", "labels.nii.gz"):
        img = nib.load(case / name)
        assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.affine, affine)
        assert img.header.get_zooms() == pytest.approx(np.linalg.norm(affine[:3, :3], axis=0))
        with pytest.raises(RuntimeError, match="orthonormal"):
            sitk.ReadImage(str(case / name))
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    assert np.degrees(np.arcsin(np.abs(cols[:, 1] @ cols[:, 2]))) == pytest.approx(abs(tilt),
                                                                              abs=0.05)


def assert_files_named_by_slice(case: Path, min_files: int = 0) -> None:
    """Every file a qc.json finding names is a readable input: ``slice <i> sha256:<16 hex>``
    with ``i`` a slice of the manifest's inputs and the hash that slice's (never
    ``(unreadable)`` for a file the job read)."""
    import json

    qc = json.loads((case / "qc.json").read_text())
    assert "(unreadable)" not in json.dumps(qc)
    inputs = read_case(case, arrays=False).manifest["inputs"]
    named = [ref for f in qc["loader_findings"] + qc["segmentation_findings"]
             for ref in f["files"]]
    assert len(named) >= min_files
    for ref in named:
        m = re.fullmatch(r"slice (\d+) sha256:([0-9a-f]{16})", ref)
        assert m, ref
        assert inputs[int(m[1])]["sha256"].startswith(m[2]), ref


@pytest.mark.slow
def test_killed_batch_then_rerun_completes(shared_ct, tmp_path):
    tree = tmp_path / "in"
    for name in ("lungdx-a0001-chest-5mm", "lungdx-a0002-b40f", "lungdx-a0002-b70f"):
        copy_series(shared_ct / name, tree / name)
    out = tmp_path / "out"
    proc = subprocess.Popen([*MEDSCAN, "segment", f"input={tree}", f"output={out}",
                             "progress=false"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(iter_case_dirs(out)):
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in iter_case_dirs(out)}
    assert 1 <= len(done_before) < 3, "the kill should land mid-batch"
    r = cli(f"input={tree}", f"output={out}", "progress=false")
    assert r.returncode == 0, r.stderr
    assert len(list(iter_case_dirs(out))) == 3
    leftovers = [p.name for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []
    rows = read_index(out)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert "skipped" in r.stderr  # the cases finished before the kill were not redone


def test_shards_split_and_merge_into_one_index(shared_ct, tmp_path):
    tree = tmp_path / "in"
    for name in ("lungdx-a0002-b40f", "lungdx-a0002-b70f"):
        copy_series(shared_ct / name, tree / name)
    out = tmp_path / "out"
    codes = [run_segment(config(input=tree, output=out, shard=s, num_shards=2, progress=False,
                                mesh_labels="[lung_left]", mesh_formats="[ply]",
                                preview=False))
             for s in (0, 1)]
    assert codes == [0, 0]
    rows = read_index(out)
    assert len(rows) == 2
    for row in rows:
        m = read_case(out / row["case_id"], arrays=False).manifest
        assert m["config"]["shard"] == shard_of(row["case_id"], 2)


def test_bad_file_in_tree_does_not_stop_the_batch(shared_ct, tmp_path):
    tree = tmp_path / "in"
    copy_series(shared_ct / "lungdx-a0002-b70f", tree / "good")
    bad = tree / "bad"
    bad.mkdir()
    (bad / "notes.dcm").write_text("not a dicom file")
    data = (shared_ct / "lungdx-a0002-b40f" / "1-01.dcm").read_bytes()
    (bad / "cut.dcm").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    r = cli(f"input={tree}", f"output={out}", "progress=false", "mesh_formats=[ply]")
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stderr
    good = case_for(out, tree / "good")
    assert read_case(good, arrays=False).status == "ok"
    assert "bad/notes.dcm" in r.stderr  # reported on the terminal, relative to the input root
    assert str(tree) not in r.stderr
    for row in read_index(out):
        if row["status"] != "ok":
            assert row["reason"], row


@pytest.mark.parametrize(("args", "says"), [
    (["mesh_formats=[xyz]"], "mesh format"), (["outputs=[nifti,xyz]"], "unknown output"),
    (["shard=3", "num_shards=2"], "shard"),
    (["num_shards=0"], "num_shards"), (["min_slices=-5"], "min_slices"),
    (["backend=gpu"], "backend=gpu"), (["salt=short"], "at least 16")])
def test_bad_config_is_one_line_exit_2_before_any_output(sample_ct, tmp_path, args, says):
    """Nothing is created in the output folder (no .hydra/run-*) for a config error."""
    from medscan.backend import BackendUnavailable, get_backend

    if args == ["backend=gpu"]:
        try:
            get_backend("gpu")
            pytest.skip("a GPU is available here: backend=gpu is not an error")
        except BackendUnavailable:
            pass
    out = tmp_path / "out"
    r = cli(f"input={sample_ct}", f"output={out}", "progress=false", *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr
    assert not out.exists()


def test_bad_config_values(tmp_path):
    r = cli(f"input={tmp_path / 'missing'}", f"output={tmp_path}")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert os.path.isdir(tmp_path)


def test_write_volume_case_for_in_memory_volumes(sample_ct, tmp_path):
    """The napari widget's path: one loaded volume -> a case folder in the same layout."""
    from medscan.ct.analyse import CaseOptions
    from medscan.ct.job import write_volume_case
    from medscan.ct.tissues import default_tissues
    from medscan.dicom import load_path

    volume = load_path(sample_ct)
    options = CaseOptions(tissues=default_tissues(), mesh_labels=["lung_left"],
                          mesh_formats=["ply"], preview=False)
    manifest = write_volume_case(volume, tmp_path, options)
    assert manifest["status"] == "ok" and len(manifest["inputs"]) == 30
    c = read_case(tmp_path / volume.case_id, arrays=False)
    assert c.files["meshes"] == {"lung_left": {"ply": tmp_path / volume.case_id
                                                  / "meshes" / "lung_left.ply"}}
    (row,) = read_index(tmp_path)
    assert row["case_id"] == volume.case_id and float(row["lung_left_ml"]) > 800


def _lying_copy(sample: Path, dst: Path, lying: slice, tag: str) -> Path:
    """The sample series under a new SeriesInstanceUID, files in ``lying`` with Rows = Columns =
    65535 while PixelData keeps 512 x 512 (header sizes that lie: refused at discovery)."""
    from dicom_faults import set_header
    from pydicom.uid import generate_uid

    copy_series(sample, dst)
    uid = generate_uid(entropy_srcs=[tag])
    files = sorted(dst.glob("*.dcm"))
    for f in files:
        set_header(f, SeriesInstanceUID=uid)
    for f in files[lying]:
        set_header(f, Rows=65535, Columns=65535)
    return dst


def test_skipped_files_are_not_dropped_silently(sample_ct, tmp_path):
    """A series whose files were all refused is a failed case (exit 1); a series that lost
    slices says so in its qc.json; neither names a path."""
    tree = tmp_path / "in"
    _lying_copy(sample_ct, tree / "all", slice(None), "all")
    _lying_copy(sample_ct, tree / "some", slice(10, 12), "some")
    out = tmp_path / "out"
    code = run_segment(config(input=str(tree), output=str(out), progress="false",
                              preview="false", **{"mesh_labels": "[lung_left]",
                                                  "mesh_formats": "[ply]"}))
    assert code == 1
    rows = {r["case_id"]: r for r in read_index(out)}
    assert len(rows) == 2
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "30 file(s) skipped" in failed[0]["reason"]
    assert "65535" in failed[0]["reason"]
    partial = case_for(out, tree / "some")
    findings = read_case(partial, arrays=False).loader_findings
    skipped = [f for f in findings if f.code == "skipped_slices"]
    assert len(skipped) == 1 and skipped[0].message.startswith("2 file(s) skipped")
    for case in iter_case_dirs(out):
        for f in case.rglob("*.json"):
            assert str(tmp_path) not in f.read_text()
