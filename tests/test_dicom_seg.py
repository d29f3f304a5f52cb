"""DICOM SEG output (medscan.io.dicom_seg) on real series, read back by highdicom AND pydicom.

Label maps come from NumPy thresholds of the loaded HU (the tissue table's bands plus a
"lung" half split into lung_left/lung_right), so every voxel's expected label is known without
medscan's segmentation. References: highdicom's own frame lookup by source SOPInstanceUID, and a
plain pydicom walk over the per-frame functional groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medscan.ct.tissues import default_tissues
from medscan.dicom import load_path
from medscan.io.dicom_seg import (
    SEGMENT_CODES,
    SegGeometryError,
    place_on_grid,
    read_seg,
    read_seg_labels,
    write_seg,
)
from medscan.volume import Label, LabelMap, Volume
from tests.dicom_inputs import B40F, copy_plain

TILT = "ge-head-tilt-uneven"


def threshold_labels(volume: Volume) -> LabelMap:
    """Tissue-band labels of every voxel above -1000 HU; low-density voxels split L/R as lungs."""
    table = default_tissues()
    hu = volume.hu.astype(np.int16)
    array = table.int16_lut()[hu.view(np.uint16)]
    array[hu < -1000] = 0
    half = np.zeros(hu.shape, bool)
    half[:, :, hu.shape[2] // 2:] = True  # +x = patient left (LPS) for these axial series
    lungish = (hu > -1000) & (hu < -500)
    array[lungish & half] = table["lung_left"].label
    array[lungish & ~half] = table["lung_right"].label
    labels = {t.label: Label(t.label, t.name, t.color) for t in table.all}
    return LabelMap(array, volume.affine, labels, case_id=volume.case_id)


def source_uids(files: list[str]) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def nearest_label_slice(volume: Volume, files: list[str]) -> np.ndarray:
    """Independent placement: the label slice whose origin is closest (mm) to each source IPP."""
    k = np.arange(volume.shape[0])
    origins = volume.world_from_zyx(np.column_stack([k, 0 * k, 0 * k]))
    ipp = np.array([pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient
                    for f in files], float)
    return np.linalg.norm(ipp[:, None, :] - origins[None], axis=2).argmin(axis=1)


def check_frames_pydicom(seg_path: Path, labels: LabelMap, uids: list[str],
                         slice_of_source: np.ndarray) -> int:
    """Every frame (plain pydicom) equals its label on the source slice it references."""
    ds = pydicom.dcmread(seg_path)
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    value_of = {int(s.SegmentNumber): int(s.SegmentDescription.split("medscan label ")[1][:-1])
                for s in ds.SegmentSequence}
    seen = set()
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        n = uids.index(str(ref))
        k = slice_of_source[n]
        expected = labels.array[k] == value_of[number]
        np.testing.assert_array_equal(frames[i].astype(bool), expected)
        seen.add((n, number))
    # omitted frames are exactly the empty ones
    for n, k in enumerate(slice_of_source):
        for number, value in value_of.items():
            if (n, number) not in seen:
                assert not np.any(labels.array[k] == value)
    return len(frames)


def check_frames_highdicom(seg_path: Path, labels: LabelMap, uids: list[str],
                           slice_of_source: np.ndarray) -> None:
    """highdicom's lookup by source SOPInstanceUID gives the label map on the source slices."""
    seg = hd.seg.segread(seg_path)
    for desc in seg.SegmentSequence:
        value = int(desc.SegmentDescription.split("medscan label ")[1][:-1])
        pixels = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[int(desc.SegmentNumber)], assert_missing_frames_are_empty=True
        )[..., 0]
        np.testing.assert_array_equal(pixels.astype(bool), labels.array[slice_of_source] == value)


def check_references(seg_path: Path, files: list[str]) -> None:
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    src = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    referenced = {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence}
    assert referenced == set(source_uids(files))


@pytest.fixture(scope="module")
def even_seg(shared_ct: Path, tmp_path_factory) -> tuple[Volume, LabelMap, Path]:
    """The b40f chest series, its threshold label map and its SEG."""
    volume = load_path(shared_ct / B40F, uniform=True)
    labels = threshold_labels(volume)
    path = write_seg(labels, volume.files, tmp_path_factory.mktemp("seg") / "seg.dcm")
    return volume, labels, path


def test_seg_even_series_round_trip(even_seg) -> None:
    volume, labels, path = even_seg
    uids = source_uids(volume.files)
    identity = np.arange(len(volume.files))
    assert check_frames_pydicom(path, labels, uids, identity) > 0
    check_frames_highdicom(path, labels, uids, identity)
    check_references(path, volume.files)

    back = read_seg(path)
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.affine, labels.affine, atol=1e-4)
    present = {int(v) for v in np.unique(labels.array) if v}
    assert {v: back.labels[v].name for v in back.labels} == {
        v: labels.labels[v].name for v in present}
    for v in present:  # colours survive the CIELab round trip within rounding
        assert np.abs(np.subtract(back.labels[v].color, labels.labels[v].color)).max() <= 1


def test_seg_codes_are_snomed(even_seg) -> None:
    seg = hd.seg.segread(even_seg[2])
    by_label = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    assert {"lung_left", "lung_right", "fat", "soft_tissue", "bone"} <= set(by_label)
    for name, item in by_label.items():
        code = SEGMENT_CODES[name]
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == code.category[:2]
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == code.type[:2]
    left = by_label["lung_left"].SegmentedPropertyTypeCodeSequence[0]
    assert left.CodeValue == "39607008"  # SNOMED-CT Lung
    assert left.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"  # Left
    assert seg.get_segment_description(1).algorithm_type.value == "AUTOMATIC"


def test_seg_tilted_even_series_exact(shared_ct_qa: Path, tmp_path: Path) -> None:
    """The tilted stack's first 14 slices (even 4.22 mm steps): sheared affine, exact frames."""
    files = copy_plain(shared_ct_qa / TILT, tmp_path / "tilt14", n=14)
    volume = load_path(files[0].parent, uniform=True)
    codes = {f.code for f in volume.findings}
    assert "gantry_tilt" in codes and "resampled" not in codes and volume.shape[0] == 14
    labels = threshold_labels(volume)
    path = write_seg(labels, volume.files, tmp_path / "seg.dcm")
    uids = source_uids(volume.files)
    identity = nearest_label_slice(volume, volume.files)
    np.testing.assert_array_equal(identity, np.arange(14))
    check_frames_pydicom(path, labels, uids, identity)
    check_frames_highdicom(path, labels, uids, identity)
    back = read_seg(path)
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)


def test_seg_uneven_tilted_resampled_maps_to_source_slices(shared_ct_qa: Path,
                                                           tmp_path: Path) -> None:
    """uniform=True resampled the stack: each source slice gets its nearest label slice."""
    volume = load_path(shared_ct_qa / TILT, uniform=True)
    assert "resampled" in {f.code for f in volume.findings}
    assert volume.shape[0] != len(volume.files)
    labels = threshold_labels(volume)
    path = write_seg(labels, volume.files, tmp_path / "seg.dcm")
    uids = source_uids(volume.files)
    nearest = nearest_label_slice(volume, volume.files)
    check_frames_pydicom(path, labels, uids, nearest)
    check_frames_highdicom(path, labels, uids, nearest)
    check_references(path, volume.files)

    # Read back: the frames are unevenly spaced, so they land on the uniform grid the loader
    # makes (same affine), each grid slice holding its nearest source slice's labels.
    back = read_seg_labels(path)
    assert back.resampled
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-3)
    ipp = np.array([pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient
                    for f in volume.files], float)
    k = np.arange(volume.shape[0])
    grid = volume.world_from_zyx(np.column_stack([k, 0 * k, 0 * k]))
    source_of_grid = np.linalg.norm(grid[:, None] - ipp[None], axis=2).argmin(axis=1)
    np.testing.assert_array_equal(back.array, labels.array[nearest][source_of_grid])
    with pytest.raises(ValueError, match="unevenly spaced"):
        read_seg(path, uniform=False)

    # ... so the label map does not round-trip exactly: measure says so (never a silent ok)
    from medscan.ct.measure_job import check_seg_reference

    assert not np.array_equal(back.array, labels.array)
    codes = [f.code for f in check_seg_reference(path, volume)]
    assert codes == ["seg_resampled"], codes


def test_seg_of_even_series_needs_no_resampling_warning(even_seg) -> None:
    from medscan.ct.measure_job import check_seg_reference

    volume, _labels, path = even_seg
    assert check_seg_reference(path, volume) == []


def test_seg_refuses_unplaceable_label_maps(shared_ct: Path, shared_ct_qa: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "seg.dcm"
    uneven = load_path(shared_ct_qa / TILT, uniform=False)  # mean-step affine, acquired slices
    with pytest.raises(SegGeometryError, match="uniform=True"):
        write_seg(threshold_labels(uneven), uneven.files, out)

    volume = load_path(shared_ct / B40F)
    labels = threshold_labels(volume)
    cropped = LabelMap(labels.array[:, 1:, :].copy(), labels.affine, labels.labels)
    with pytest.raises(SegGeometryError, match="pixels"):
        write_seg(cropped, volume.files, out)
    shifted = labels.affine.copy()
    shifted[:3, 3] += shifted[:3, 0] * 3  # three columns off
    with pytest.raises(SegGeometryError, match="in-plane grid"):
        write_seg(LabelMap(labels.array, shifted, labels.labels), volume.files, out)
    short = LabelMap(labels.array[:10].copy(), labels.affine, labels.labels)
    with pytest.raises(SegGeometryError, match="outside the label map"):
        write_seg(short, volume.files, out)
    other = sorted((shared_ct / "lungdx-a0002-b70f").glob("*.dcm"))
    with pytest.raises(SegGeometryError, match="SeriesInstanceUID"):
        write_seg(labels, [*volume.files[:15], *map(str, other[15:])], out)
    empty = LabelMap(np.zeros_like(labels.array), labels.affine, labels.labels)
    with pytest.raises(SegGeometryError, match="no labelled voxel"):
        write_seg(empty, volume.files, out)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_seg_carries_no_paths_or_pseudonyms(shared_ct: Path, even_seg) -> None:
    """A SEG copies the source's patient module (by design) but no path, nor medscan's ids."""
    volume, _, path = even_seg
    raw = path.read_bytes()
    for text in (str(shared_ct), B40F, volume.case_id, Path(volume.files[0]).name):
        assert text.encode() not in raw
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    src = pydicom.dcmread(volume.files[0], stop_before_pixels=True)
    assert seg.PatientID == src.PatientID  # documented: the SEG is for the source's PACS


def test_seg_deterministic(even_seg, tmp_path: Path) -> None:
    """Same labels, same SEG UIDs; other labels, other UIDs (DICOM: new content, new UID)."""
    volume, labels, path = even_seg
    again = pydicom.dcmread(write_seg(labels, volume.files, tmp_path / "a.dcm"))
    first = pydicom.dcmread(path)
    assert again.SOPInstanceUID == first.SOPInstanceUID
    assert again.SeriesInstanceUID == first.SeriesInstanceUID
    edited = labels.array.copy()
    edited[0, 0, 0] = 5 if edited[0, 0, 0] != 5 else 4
    other = pydicom.dcmread(write_seg(LabelMap(edited, labels.affine, labels.labels),
                                      volume.files, tmp_path / "b.dcm"))
    assert other.SOPInstanceUID != first.SOPInstanceUID


def test_napari_reader_opens_seg_like_the_label_nifti(even_seg, tmp_path: Path) -> None:
    """The napari reader shows a SEG as the same Labels layer as the label map's NIfTI."""
    import nibabel as nib

    from medscan.napari._reader import classify, get_reader
    from medscan.volume import LPS_TO_RAS

    volume, labels, path = even_seg
    nifti = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels.array.transpose(2, 1, 0), LPS_TO_RAS @ labels.affine),
             nifti)
    assert classify(path) == "seg" and classify(volume.files[0]) is None
    (seg_data, seg_kwargs, kind), = get_reader(str(path))(str(path))
    (ref_data, ref_kwargs, _), = get_reader(str(nifti))(str(nifti))
    assert kind == "labels"
    np.testing.assert_array_equal(seg_data, ref_data)
    np.testing.assert_allclose(seg_kwargs["metadata"]["medscan"]["lps_affine"],
                               ref_kwargs["metadata"]["medscan"]["lps_affine"], atol=1e-4)
    names = seg_kwargs["metadata"]["medscan"]["label_names"]
    present = {int(v) for v in np.unique(labels.array) if v}
    assert names == {v: labels.labels[v].name for v in present}


def flipped(labels: LabelMap, array_axis: int) -> LabelMap:
    """The same voxels stored with one array axis reversed (affine follows)."""
    index_axis = 2 - array_axis
    affine = labels.affine.copy()
    affine[:3, 3] += affine[:3, index_axis] * (labels.array.shape[array_axis] - 1)
    affine[:3, index_axis] *= -1
    return LabelMap(np.flip(labels.array, array_axis), affine, labels.labels)


def swapped_xy(labels: LabelMap) -> LabelMap:
    """The same voxels stored with rows and columns exchanged."""
    affine = labels.affine.copy()
    affine[:, [0, 1]] = affine[:, [1, 0]]
    return LabelMap(labels.array.transpose(0, 2, 1), affine, labels.labels)


def test_seg_from_reoriented_label_map(even_seg, tmp_path: Path) -> None:
    """A label map storing the same voxels flipped / transposed (another tool's NIfTI) gives
    the same frames: it is brought to the source's axes by transposes and flips only."""
    volume, labels, _ = even_seg
    uids = source_uids(volume.files)
    identity = np.arange(len(volume.files))
    variants = {"rows flipped": flipped(labels, 1), "slices flipped": flipped(labels, 0),
                "x/y swapped, columns flipped": flipped(swapped_xy(labels), 2)}
    rng = np.random.default_rng(0)
    voxels = rng.integers(0, labels.array.shape, size=(50, 3))  # (k, j, i)
    world = volume.world_from_zyx(voxels)
    for n, variant in enumerate(variants.values()):
        # the helpers keep every voxel at its LPS position
        ijk = np.linalg.solve(variant.affine[:3, :3], (world - variant.affine[:3, 3]).T).T
        kji = np.rint(ijk[:, ::-1]).astype(int)
        np.testing.assert_allclose(ijk[:, ::-1], kji, atol=1e-6)
        np.testing.assert_array_equal(variant.array[tuple(kji.T)], labels.array[tuple(voxels.T)])
        out = write_seg(variant, volume.files, tmp_path / f"variant{n}.dcm")
        check_frames_pydicom(out, labels, uids, identity)


def test_seg_passes_dciodvfy(even_seg, shared_ct: Path, shared_ct_qa: Path,
                             tmp_path: Path) -> None:
    """dicom3tools' IOD validator (an independent implementation) finds no error in the SEG,
    also for A0001 (its headers carry an incomplete ReferencedStudySequence item) and the GE
    tilt series (PatientIdentityRemoved YES with an empty DeidentificationMethod)."""
    import shutil
    import subprocess

    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("needs dciodvfy (Debian: apt-get install dicom3tools; in run.sh TEST_APT)")
    paths = [even_seg[2]]
    for n, series in enumerate((shared_ct / "lungdx-a0001-chest-5mm", shared_ct_qa / TILT)):
        volume = load_path(series, uniform=True)
        paths.append(write_seg(threshold_labels(volume), volume.files, tmp_path / f"{n}.dcm"))
    for path in paths:
        out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
        report = out.stdout + out.stderr
        assert "Segmentation" in report  # it recognised the IOD
        assert not [line for line in report.splitlines() if line.startswith("Error")], report


@pytest.fixture(scope="module")
def seg_job(sample_ct: Path, tmp_path_factory) -> tuple[Path, Path]:
    """`medscan segment outputs=[nifti,dicom_seg]` on the embedded sample: (batch, case)."""
    from medscan.ct.job import run_segment
    from medscan.io import iter_case_dirs
    from tests.test_segment_job import config

    out = tmp_path_factory.mktemp("seg-job") / "out"
    cfg = config(input=sample_ct, output=out, progress=False, mesh_formats="[ply]",
                 outputs="[nifti,dicom_seg]")
    assert run_segment(cfg) == 0
    (case,) = iter_case_dirs(out)
    return out, case


def test_segment_job_writes_seg(sample_ct: Path, seg_job) -> None:
    """`outputs=[nifti,dicom_seg]`: seg.dcm holds the case's labels.nii.gz on the source slices."""
    from medscan.io import read_manifest

    out, case = seg_job
    labels = LabelMap.from_nifti(case / "labels.nii.gz")
    back = read_seg(case / "seg.dcm")
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.affine, labels.affine, atol=1e-4)
    table = read_manifest(case)["labels"]
    assert {str(v): lab.name for v, lab in back.labels.items()} == {
        k: v["name"] for k, v in table.items() if int(k) in np.unique(labels.array)}
    files = sorted(str(f) for f in sample_ct.glob("*.dcm"))
    check_references(case / "seg.dcm", files)
    assert "dicom_seg" in read_manifest(case)["config"]["outputs"]
    assert (case / "report.html").is_file() and (out / "report.html").is_file()


def test_segment_cli_logs_name_no_source_uid(sample_ct: Path, tmp_path: Path) -> None:
    """highdicom logs each attribute it copies at INFO, naming the source SOPInstanceUID; the
    job's logging config (conf/segment.yaml hydra.job_logging) keeps those lines out of the
    terminal and the run log, which must name no UID of the source series (ids are keyed
    hashes precisely so that UIDs stay out)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "medscan.cli", "segment", f"input={sample_ct}",
                        f"output={out}", "progress=false", "mesh_formats=[ply]",
                        "outputs=[nifti,dicom_seg]"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert (next(out.glob("ct-*")) / "seg.dcm").is_file()
    logs = r.stdout + r.stderr + "".join(p.read_text() for p in out.rglob("*.log"))
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            for f in sample_ct.glob("*.dcm")}
    uids |= {str(pydicom.dcmread(next(sample_ct.glob("*.dcm")), stop_before_pixels=True)
                 .SeriesInstanceUID)}
    assert not [u for u in uids if u in logs]


def test_segment_job_seg_refused_is_a_failed_case(shared_ct_qa: Path, tmp_path: Path) -> None:
    """A SEG that cannot be placed (uneven stack kept with uniform=false) fails the case with
    the reason; nothing of it is left behind, everything else of the case is."""
    from medscan.ct.job import run_segment
    from medscan.io import iter_case_dirs, read_manifest
    from tests.test_segment_job import config

    out = tmp_path / "out"
    cfg = config(input=shared_ct_qa / TILT, output=out, progress=False, mesh_formats="[]",
                 outputs="[nifti,dicom_seg]", uniform=False, preview=False)
    assert run_segment(cfg) == 1
    (case,) = iter_case_dirs(out)
    manifest = read_manifest(case)
    assert manifest["status"] == "failed"
    assert "SegGeometryError" in manifest["reason"] and "uniform=True" in manifest["reason"]
    assert not (case / "seg.dcm").exists()
    # the refusal costs the SEG only: every other output and finding of the case stays
    assert {"volume.nii.gz", "labels.nii.gz", "metrics.json", "qc.json"} <= {
        p.name for p in case.iterdir()}
    qc = json.loads((case / "qc.json").read_text())
    codes = [f["code"] for f in qc["segmentation_findings"]]
    assert "no_lungs" in codes and "output_failed" in codes
    (failed,) = [f for f in qc["segmentation_findings"] if f["code"] == "output_failed"]
    assert failed["severity"] == "error" and failed["details"]["output"] == "dicom_seg"
    assert "SegGeometryError" in failed["message"]
    assert "no lungs" in manifest["reason"]  # the case's own reason is kept beside the SEG's


def measure_config(**overrides) -> dict:
    from tests.test_measure_job import _config

    return _config("measure", **overrides)


def test_measure_job_reads_seg_of_dicom_series(sample_ct: Path, seg_job, tmp_path: Path) -> None:
    """`medscan measure volume=<DICOM series> labels=seg.dcm`: the SEG measured on its series
    gives the metrics `segment` computed from the same labels."""
    from medscan.ct.measure_job import run_measure
    from medscan.io import iter_case_dirs

    _, case = seg_job
    out = tmp_path / "m"
    assert run_measure(measure_config(volume=sample_ct, labels=case / "seg.dcm",
                                      output=out)) == 0
    (new,) = iter_case_dirs(out)
    before = json.loads((case / "metrics.json").read_text())
    after = json.loads((new / "metrics.json").read_text())
    for key in ("lung_volume_ml", "lung_left_ml", "lung_right_ml", "mean_lung_hu",
                "laa950_percent", "perc15_hu"):
        assert after[key] == pytest.approx(before[key], rel=1e-9), key
    for name, entry in after["tissues"].items():
        assert entry["volume_ml"] == pytest.approx(before["tissues"][name]["volume_ml"])
    np.testing.assert_array_equal(LabelMap.from_nifti(new / "labels.nii.gz").array,
                                  LabelMap.from_nifti(case / "labels.nii.gz").array)


def test_measure_refreshes_the_case_report(seg_job, tmp_path: Path) -> None:
    """Re-measuring a case folder after editing its labels rewrites report.html too."""
    import shutil

    from medscan.ct.measure_job import run_measure
    from medscan.io.tables import format_value

    _, case = seg_job
    copy = tmp_path / case.name
    shutil.copytree(case, copy)
    from medscan.io import read_manifest

    labels = LabelMap.from_nifti(copy / "labels.nii.gz", read_manifest(copy)["labels"])
    edited = labels.array.copy()
    edited[edited == labels.by_name("lung_left").value] = labels.by_name("soft_tissue").value
    LabelMap(edited, labels.affine, labels.labels).to_nifti(copy / "labels.nii.gz")
    old = json.loads((copy / "metrics.json").read_text())["lung_volume_ml"]
    assert run_measure(measure_config(input=copy)) == 0
    new = json.loads((copy / "metrics.json").read_text())["lung_volume_ml"]
    assert new < old
    report = (copy / "report.html").read_text()
    assert f">{format_value(new)} mL<" in report and f">{format_value(old)} mL<" not in report
    qc = json.loads((copy / "qc.json").read_text())
    assert [f["code"] for f in qc["segmentation_findings"]].count("dicom_seg_stale") == 1
    assert "dicom_seg_stale" in report  # said in the report too


def test_measure_unedited_case_keeps_its_seg_current(seg_job, tmp_path: Path) -> None:
    import shutil

    from medscan.ct.measure_job import run_measure

    _, case = seg_job
    copy = tmp_path / case.name
    shutil.copytree(case, copy)
    assert run_measure(measure_config(input=copy)) == 0
    qc = json.loads((copy / "qc.json").read_text())
    assert "dicom_seg_stale" not in [f["code"] for f in qc["segmentation_findings"]]


def test_seg_slab_is_placed_on_the_series_grid(even_seg, tmp_path: Path) -> None:
    """A SEG whose first and last slices hold no label covers fewer slices than the series;
    place_on_grid puts it back where it lies (zeros around), refusing a shifted grid."""
    volume, labels, _ = even_seg
    array = labels.array.copy()
    array[:3] = 0
    array[-2:] = 0
    path = write_seg(LabelMap(array, labels.affine, labels.labels), volume.files,
                     tmp_path / "slab.dcm")
    slab = read_seg(path)
    assert slab.array.shape[0] == array.shape[0] - 5
    np.testing.assert_array_equal(
        place_on_grid(slab.array, slab.affine, volume.shape, volume.affine), array)
    shifted = volume.affine.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 0]
    with pytest.raises(SegGeometryError, match="between"):
        place_on_grid(slab.array, slab.affine, volume.shape, shifted)


def other_tool_seg(volume: Volume, pixel_array: np.ndarray, kind: str, path: Path,
                   n_segments: int, **kwargs) -> Path:
    """A SEG as another tool writes it (highdicom directly: no medscan label values)."""
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.files]
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=f"thing {n}",
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type="MANUAL") for n in range(1, n_segments + 1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixel_array, segmentation_type=kind,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=7,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="other",
        manufacturer_model_name="other", software_versions="1", device_serial_number="1",
        **kwargs)
    seg.save_as(path)
    return path


def test_read_seg_of_other_tools(even_seg, tmp_path: Path) -> None:
    """LABELMAP and FRACTIONAL SEGs read back on the series' grid (segment numbers as values);
    overlapping BINARY segments are refused (a label map holds one label per voxel)."""
    from medscan.io.dicom_seg import SegReadError

    volume, labels, _ = even_seg
    lung = labels.array == labels.labels[8].value
    bone = labels.array == labels.labels[5].value
    expected = np.where(lung, 1, np.where(bone, 2, 0)).astype(np.uint8)
    labelmap = other_tool_seg(volume, expected, "LABELMAP", tmp_path / "lm.dcm", 2)
    fractional = other_tool_seg(volume, np.stack([lung, bone], -1).astype(np.float32),
                                "FRACTIONAL", tmp_path / "fr.dcm", 2,
                                fractional_type="PROBABILITY")
    for path in (labelmap, fractional):
        back = read_seg(path)
        np.testing.assert_array_equal(back.array, expected)
        np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
        assert {v: lab.name for v, lab in back.labels.items()} == {1: "thing 1", 2: "thing 2"}
    overlap = np.stack([lung | bone, bone], -1).astype(np.uint8)
    path = other_tool_seg(volume, overlap, "BINARY", tmp_path / "ov.dcm", 2)
    with pytest.raises(SegReadError, match="overlap"):
        read_seg(path)


def _other_series(sample_ct: Path, dst: Path) -> Path:
    """The sample series re-issued as another series (new Series/SOP Instance UIDs, same
    pixels and grid): what a second reconstruction of the same scan looks like to a SEG."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir()
    series_uid = generate_uid(entropy_srcs=["fix14a other series"])
    for i, path in enumerate(sorted(p for p in sample_ct.rglob("*") if p.is_file())):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["fix14a other series", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f"{i:04d}.dcm")
    return dst


def test_measure_refuses_a_seg_of_another_series(sample_ct: Path, seg_job, tmp_path: Path,
                                                capsys) -> None:
    """Same grid, other series: refused when the volume is DICOM; warned when it is NIfTI."""
    from medscan.ct.measure_job import run_measure

    _, case = seg_job
    other = _other_series(sample_ct, tmp_path / "other")
    out = tmp_path / "m"
    assert run_measure(measure_config(volume=other, labels=case / "seg.dcm", output=out)) == 1
    err = capsys.readouterr().err
    assert "seg.dcm: the DICOM SEG references another series" in err
    assert not out.exists() or not [p for p in out.iterdir() if p.is_dir()]
    # a NIfTI volume has no series to check against: measured, with a warning
    nifti = tmp_path / "n"
    assert run_measure(measure_config(volume=case / "volume.nii.gz", labels=case / "seg.dcm",
                                      output=nifti, case_id="n")) == 0
    qc = json.loads((nifti / "n" / "qc.json").read_text())
    (warn,) = [f for f in qc["segmentation_findings"] if f["code"] == "seg_reference_unchecked"]
    assert warn["severity"] == "warning"
    # its own series: no such finding (the reference was checked)
    same = tmp_path / "s"
    assert run_measure(measure_config(volume=sample_ct, labels=case / "seg.dcm", output=same,
                                      case_id="s")) == 0
    qc = json.loads((same / "s" / "qc.json").read_text())
    assert not [f for f in qc["segmentation_findings"]
                if f["code"] == "seg_reference_unchecked"]
