"""medscan.dicom on real CT series: values and geometry against dcm2niix, ordering, mixing, gaps."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medscan.dicom import AIR_HU, PADDING_HU, SeriesError, decode_file, discover, load, load_path

SERIES = [
    "lungdx-a0001-chest-5mm",
    "lungdx-a0002-b40f",
    "lungdx-a0002-b70f",
    pytest.param("ricord-1a-000082-jpegll", marks=pytest.mark.slow),
]


def dcm2niix(src: Path, out: Path) -> nib.Nifti1Image:
    """Convert ``src`` with Debian's dcm2niix (the independent reference)."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix not installed (apt-get install dcm2niix)")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [exe, "-z", "n", "-f", "ref", "-o", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    return nib.load(str(out / "ref.nii"))


def ipp(path: Path) -> np.ndarray:
    return np.array(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, float)


def copy_series(src: Path, dst: Path, prefix: str = "") -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for f in sorted(src.glob("*.dcm")):
        target = dst / f"{prefix}{f.name}"
        shutil.copy2(f, target)
        out.append(target)
    return out


def test_sample_loads(sample_ct: Path) -> None:
    vol = load_path(sample_ct)
    assert vol.shape == (30, 512, 512)
    assert vol.hu.dtype == np.int16
    assert vol.case_id.startswith("ct-") and len(vol.case_id) == 13
    assert vol.patient_id.startswith("pt-")
    # Slices go up along +z (normal of an axial series) in 8 mm steps.
    assert vol.spacing == pytest.approx((8.0, 0.646484375, 0.646484375))
    z = [ipp(f)[2] for f in vol.files]
    assert z == sorted(z)
    # Chest CT: air outside the body and in the lungs, soft tissue and bone inside.
    assert vol.hu.min() >= AIR_HU
    assert (vol.hu < -900).mean() > 0.2
    assert vol.hu.max() > 1000


@pytest.mark.parametrize("name", SERIES)
def test_equals_dcm2niix(shared_ct: Path, tmp_path: Path, name: str) -> None:
    src = shared_ct / name
    ref = dcm2niix(src, tmp_path / "ref")
    vol = load_path(src)
    mine = nib.Nifti1Image(vol.hu.transpose(2, 1, 0), vol.nifti_affine())
    ref_c, mine_c = nib.as_closest_canonical(ref), nib.as_closest_canonical(mine)
    np.testing.assert_allclose(mine_c.affine, ref_c.affine, atol=1e-3)
    expected = ref_c.get_fdata()  # dcm2niix keeps raw values + scl_slope/scl_inter
    got = np.asarray(mine_c.dataobj)
    assert got.shape == expected.shape
    padding = expected <= PADDING_HU
    assert np.array_equal(got[~padding], expected[~padding])
    assert np.all(got[padding] == AIR_HU)
    if name.startswith("ricord"):
        assert padding.sum() > 1_000_000  # the -3024 HU outside the scan circle became air


@pytest.mark.slow
def test_jpeg_lossless_fast_path_matches_pydicom(shared_ct: Path) -> None:
    files = sorted((shared_ct / "ricord-1a-000082-jpegll").glob("*.dcm"))
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    for f in files[::50]:
        fast = decode_file(f)
        reference = pydicom.dcmread(f).pixel_array  # pydicom + pylibjpeg-libjpeg
        assert fast.dtype == reference.dtype == np.int16
        assert np.array_equal(fast, reference)


def test_two_series_in_one_folder(shared_ct: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    copy_series(shared_ct / "lungdx-a0002-b40f", mixed, "b40f-")
    copy_series(shared_ct / "lungdx-a0002-b70f", mixed, "b70f-")
    found = discover(mixed)
    assert len(found.series) == 2
    assert {s.n_slices for s in found.series} == {30}
    for s in found.series:
        kernels = {pydicom.dcmread(f, stop_before_pixels=True).ConvolutionKernel for f in s.files}
        assert len(kernels) == 1
    # Same scan: same patient, different cases.
    assert found.series[0].patient_id == found.series[1].patient_id
    assert found.series[0].case_id != found.series[1].case_id
    a0001 = discover(shared_ct / "lungdx-a0001-chest-5mm").series[0]
    assert a0001.patient_id != found.series[0].patient_id


def test_shuffled_names_load_identically(sample_ct: Path, tmp_path: Path) -> None:
    files = sorted(sample_ct.glob("*.dcm"))
    names = [f"x{i:03d}.dcm" for i in range(len(files))]
    random.Random(7).shuffle(names)
    shuffled = tmp_path / "shuffled" / "deeper"
    shuffled.mkdir(parents=True)
    for f, name in zip(files, names, strict=True):
        shutil.copy2(f, shuffled / name)
    a, b = load_path(sample_ct), load_path(tmp_path / "shuffled")
    assert np.array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.case_id == b.case_id and a.patient_id == b.patient_id


def test_removed_middle_slice_is_a_gap(sample_ct: Path, tmp_path: Path) -> None:
    files = copy_series(sample_ct, tmp_path / "gap")
    full = discover(sample_ct).series[0]
    removed = full.files[14]
    z_before, z_after = ipp(full.files[13])[2], ipp(full.files[15])[2]
    (tmp_path / "gap" / removed.name).unlink()
    assert len(files) == 30
    series = discover(tmp_path / "gap").series[0]
    assert series.n_slices == 29
    gaps = [f for f in series.findings if f.code == "missing_slices"]
    assert len(gaps) == 1, [f.code for f in series.findings]
    (gap,) = gaps[0].details["gaps"]
    assert gap["from_mm"] == pytest.approx(z_before)
    assert gap["to_mm"] == pytest.approx(z_after)
    assert gap["step_mm"] == pytest.approx(16.0)
    assert gap["estimated_missing"] == 1
    assert gap["after_index"] == 13
    assert {Path(p).name for p in gaps[0].files} == {full.files[13].name, full.files[15].name}
    assert not [f for f in full.findings if f.code == "missing_slices"]
    load(series)  # still loads, with the finding


def test_same_instance_in_two_folders_loaded_once(sample_ct: Path, tmp_path: Path) -> None:
    copy_series(sample_ct, tmp_path / "a")
    copy_series(sample_ct, tmp_path / "b" / "copy")
    found = discover(tmp_path)
    assert len(found.series) == 1
    series = found.series[0]
    assert series.n_slices == 30
    dup = [f for f in series.findings if f.code == "duplicate_instance"]
    assert dup and dup[0].details["n_copies"] == 30
    assert np.array_equal(load(series).hu, load_path(sample_ct).hu)


def test_same_position_other_instance_reported(sample_ct: Path, tmp_path: Path) -> None:
    files = copy_series(sample_ct, tmp_path / "s")
    ds = pydicom.dcmread(files[5])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "s" / "zz-extra.dcm")
    series = discover(tmp_path / "s").series[0]
    assert series.n_slices == 30
    (finding,) = [f for f in series.findings if f.code == "duplicate_position"]
    assert any(p.endswith("zz-extra.dcm") for p in finding.files)


def test_mixed_shapes_split_and_report(sample_ct: Path, tmp_path: Path) -> None:
    files = copy_series(sample_ct, tmp_path / "m")
    for f in files[:3]:  # same SeriesInstanceUID, but 256x256 pixels
        ds = pydicom.dcmread(f)
        small = ds.pixel_array[::2, ::2].copy()
        ds.Rows, ds.Columns = small.shape
        ds.PixelSpacing = [v * 2 for v in ds.PixelSpacing]
        ds.PixelData = small.tobytes()
        ds.save_as(f)
    found = discover(tmp_path / "m")
    assert sorted(s.n_slices for s in found.series) == [3, 27]
    for s in found.series:
        (split,) = [f for f in s.findings if f.code == "geometry_split"]
        assert split.files and all(Path(p).name in {q.name for q in s.files} for p in split.files)
        # the message says what differs, not only the sizes (breaker defect 12)
        assert "256x256 px (vs 512x512)" in split.message and "PixelSpacing" in split.message
        assert load(s).shape[1:] in {(256, 256), (512, 512)}


def test_other_modality_reported(sample_ct: Path, tmp_path: Path) -> None:
    files = copy_series(sample_ct, tmp_path / "o")
    uid = pydicom.uid.generate_uid()
    for f in files[:4]:
        ds = pydicom.dcmread(f)
        ds.Modality = "PT"
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(f)
    found = discover(tmp_path / "o")
    assert [s.n_slices for s in found.series] == [26]
    assert [(s.modality, s.n_slices) for s in found.other_series] == [("PT", 4)]
    assert [s.n_slices for s in discover(tmp_path / "o", modalities=("CT", "PT")).series] in (
        [26, 4],
        [4, 26],
    )


def test_tilted_uneven_head_ct(shared_ct_qa: Path) -> None:
    found = discover(shared_ct_qa)
    (series,) = found.series
    codes = {f.code for f in series.findings}
    assert {"gantry_tilt", "nonuniform_spacing"} <= codes
    (tilt,) = [f for f in series.findings if f.code == "gantry_tilt"]
    assert tilt.details["angle_deg"] == pytest.approx(18.5, abs=0.1)
    assert tilt.details["gantry_detector_tilt_deg"] == pytest.approx(18.5)
    vol = load(series)
    assert vol.shape == (28, 512, 512)
    # Documented choice: no resampling; the affine is sheared (its slice column is the mean
    # slice step, not along the normal) so slice 0 and the last slice sit exactly at their IPPs.
    ends = [ipp(vol.files[0]), ipp(vol.files[-1])]
    corners = vol.world_from_zyx(np.array([[0, 0, 0], [27, 0, 0]]))
    np.testing.assert_allclose(corners, ends, atol=1e-4)
    column, row_dir = vol.affine[:3, 2], vol.affine[:3, 0]
    normal = np.cross(vol.affine[:3, 0], vol.affine[:3, 1])
    cos = abs(column @ normal) / (np.linalg.norm(column) * np.linalg.norm(normal))
    assert np.degrees(np.arccos(cos)) == pytest.approx(18.5, abs=0.1)
    assert abs(column @ row_dir) < 1e-6
    # Padding (PixelPaddingValue -1500) is air, not tissue.
    assert vol.hu.min() == AIR_HU


def test_load_refuses_series_without_geometry(sample_ct: Path, tmp_path: Path) -> None:
    files = copy_series(sample_ct, tmp_path / "g")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    series = discover(tmp_path / "g").series[0]
    assert "no_geometry" in {f.code for f in series.findings}
    with pytest.raises(SeriesError, match="no_geometry"):
        load(series)


def test_uniform_resampling_of_uneven_tilted_stack(shared_ct_qa: Path, sample_ct: Path) -> None:
    series = discover(shared_ct_qa).series[0]
    acquired = load(series)
    vol = load(series, uniform=True)
    (finding,) = [f for f in vol.findings if f.code == "resampled"]
    step = finding.details["step_mm"]
    assert step == pytest.approx(4.22, abs=0.01)  # median step along the stacking line
    positions = np.array([ipp(f) for f in series.files])
    t = np.linalg.norm(positions - positions[0], axis=1)
    assert vol.shape[0] == int(t[-1] // step) + 1
    # Output slice k lies at origin + k * step along the (tilted) stacking line...
    unit = (positions[-1] - positions[0]) / t[-1]
    k = np.arange(vol.shape[0])
    world = vol.world_from_zyx(np.stack([k, 0 * k, 0 * k], axis=1))
    np.testing.assert_allclose(world, positions[0] + np.outer(k * step, unit), atol=1e-3)
    # ...the first 14 coincide with acquired slices (equal 4.22 mm steps) and are unchanged,
    assert np.array_equal(vol.hu[:14], acquired.hu[:14])
    # and one between two acquired slices is their linear interpolation.
    k = 20
    tk = k * step
    b = int(np.searchsorted(t, tk))
    w = (tk - t[b - 1]) / (t[b] - t[b - 1])
    expected = np.rint(acquired.hu[b - 1] * (1 - w) + acquired.hu[b] * w)
    assert np.abs(vol.hu[k].astype(float) - expected).max() <= 1
    # An evenly spaced series is left as acquired.
    sample = discover(sample_ct).series[0]
    even = load(sample, uniform=True)
    assert "resampled" not in {f.code for f in even.findings}
    assert np.array_equal(even.hu, load(sample).hu)


def test_rescale_per_slice_and_dtypes(sample_ct: Path, tmp_path: Path) -> None:
    files = copy_series(sample_ct, tmp_path / "r")
    base = load_path(sample_ct)
    raw5 = pydicom.dcmread(files[5]).pixel_array.astype(np.float64)
    ds = pydicom.dcmread(files[5])  # slice 5 (files sort like slices here): slope 0.5
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-512"
    ds.save_as(files[5])
    series = discover(tmp_path / "r").series[0]
    assert "rescale_varies" in {f.code for f in series.findings}
    vol = load(series)
    assert vol.hu.dtype == np.float32
    k = [p.name for p in series.files].index(files[5].name)
    expected = raw5 * 0.5 - 512
    expected[expected <= PADDING_HU] = AIR_HU
    np.testing.assert_array_equal(vol.hu[k], expected.astype(np.float32))
    others = [i for i in range(30) if i != k]
    np.testing.assert_array_equal(vol.hu[others], base.hu[others].astype(np.float32))
    # Integral rescale whose HU leave the int16 range: float32, exact values.
    ds.RescaleSlope, ds.RescaleIntercept = "1", "31000"
    ds.save_as(files[5])
    wide = load(discover(tmp_path / "r").series[0])
    assert wide.hu.dtype == np.float32
    assert wide.hu[k].max() == raw5.max() + 31000


def test_parallel_header_reading_matches_sequential(sample_ct: Path) -> None:
    one = discover(sample_ct, workers=1)
    two = discover(sample_ct, workers=2)  # process pool
    assert [(s.case_id, s.patient_id, s.files) for s in one.series] == [
        (s.case_id, s.patient_id, s.files) for s in two.series
    ]
    np.testing.assert_array_equal(one.series[0].affine, two.series[0].affine)
    assert [k.to_dict() for k in one.skipped] == [k.to_dict() for k in two.skipped]


def test_single_file_and_padding_range(sample_ct: Path, tmp_path: Path) -> None:
    src = sorted(sample_ct.glob("*.dcm"))[12]
    ds = pydicom.dcmread(src)
    raw = ds.pixel_array.astype(np.int32)
    # Stored 0..50 (HU -1024..-974) declared as padding (US: the pixels are unsigned).
    ds.add_new(0x00280120, "US", 0)  # PixelPaddingValue
    ds.add_new(0x00280121, "US", 50)  # PixelPaddingRangeLimit
    ds.save_as(tmp_path / "one.dcm")
    vol = load_path(tmp_path / "one.dcm")
    assert vol.shape == (1, 512, 512)
    assert "single_slice" in {f.code for f in vol.findings}
    hu = raw - 1024
    padded = raw <= 50
    assert padded.any() and (~padded).any()
    assert np.array_equal(vol.hu[0][~padded], hu[~padded])
    assert np.all(vol.hu[0][padded] == AIR_HU)
    (pad,) = [f for f in vol.findings if f.code == "padding"]
    assert pad.details["voxels"] == int(padded.sum())


def test_geometry_split_names_a_tilted_orientation(sample_ct: Path, tmp_path: Path) -> None:
    """One slice tilted 10 degrees (same size and spacing): the split says the orientation
    differs and by how much."""
    files = copy_series(sample_ct, tmp_path / "t")
    ds = pydicom.dcmread(files[7])
    c, s_ = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
    ds.ImageOrientationPatient = [1, 0, 0, 0, f"{c:.6f}", f"{s_:.6f}"]
    ds.save_as(files[7])
    found = discover(tmp_path / "t")
    assert sorted(s.n_slices for s in found.series) == [1, 29]
    for series in found.series:
        (split,) = [f for f in series.findings if f.code == "geometry_split"]
        assert "ImageOrientationPatient" in split.message and "10.0 deg" in split.message
