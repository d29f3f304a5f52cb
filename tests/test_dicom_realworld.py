"""Real-world DICOM (issue 11, issue 19 fault 3): the right voxels and series, or a refusal.

Each input is made from a real shared series by one generator in ``tests/dicom_inputs.py``;
expected HU come from SimpleITK (GDCM) reading the untouched original files, or from the
original series loaded by medscan when the check is about series identity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dicom_inputs as gen
import numpy as np
import pytest

from medscan.backend import get_backend
from medscan.batch import hash_inputs
from medscan.ct.ops import block_factors, block_mean
from medscan.dicom import SeriesError, discover, load, load_path
from medscan.volume import Volume

sitk = pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def b40f(shared_ct: Path) -> Path:
    return shared_ct / gen.B40F


def gdcm_hu(files: list[Path]) -> np.ndarray:
    """HU of each file as GDCM (through SimpleITK) reads them, stacked in the given order."""
    out = []
    for f in files:
        img = sitk.ReadImage(str(f), sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(img)[0])
    return np.stack(out)


def hu_of(vol: Volume) -> np.ndarray:
    return np.asarray(vol.hu, dtype=np.float32)


def originals_in_volume_order(vol: Volume, src: Path) -> list[Path]:
    """The untouched shared files matching the volume's slices (same file names)."""
    return [src / Path(f).name for f in vol.files]


# 1. pixel presence from the parsed dataset and the transfer syntax --------------------------


def test_deflated_series_loads_like_gdcm(b40f: Path, tmp_path: Path) -> None:
    gen.deflated_series(b40f, tmp_path)
    found = discover(tmp_path)
    assert len(found.series) == 1, found.to_dict()
    assert not found.other_series and not found.skipped
    vol = load(found.series[0])
    assert vol.hu.shape == (6, 512, 512)
    np.testing.assert_array_equal(hu_of(vol), gdcm_hu(originals_in_volume_order(vol, b40f)))


def test_unsupported_syntax_is_named_and_refused(b40f: Path, tmp_path: Path) -> None:
    gen.unsupported_syntax(b40f, tmp_path)
    found = discover(tmp_path)
    assert len(found.series) == 1  # a CT series with pixels: a case, never silently dropped
    codes = [f.code for f in found.series[0].findings]
    assert codes.count("unsupported_transfer_syntax") == 1
    with pytest.raises(SeriesError, match=r"unsupported transfer syntax MPEG2"):
        load(found.series[0])


# 2. one normalisation after every decoder ----------------------------------------------------


@pytest.mark.parametrize("codec", ["native", "rle"])
def test_overlay_bits_above_high_bit_are_masked(b40f: Path, tmp_path: Path, codec: str) -> None:
    n_set = gen.overlay_bits_series(b40f, tmp_path)
    assert n_set > 0.05 * 6 * 512 * 512
    if codec == "rle":  # the RLE codec returns the whole 16-bit cell, like native reads
        import pydicom

        for f in tmp_path.glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.compress(pydicom.uid.RLELossless)
            ds.save_as(f, enforce_file_format=True)
    vol = load(discover(tmp_path).series[0])
    np.testing.assert_array_equal(hu_of(vol), gdcm_hu(originals_in_volume_order(vol, b40f)))


def test_signed_12_bit_is_sign_extended_from_high_bit(b40f: Path, tmp_path: Path) -> None:
    gen.signed_garbage_series(b40f, tmp_path)
    vol = load(discover(tmp_path).series[0])
    np.testing.assert_array_equal(hu_of(vol), gdcm_hu(originals_in_volume_order(vol, b40f)))


def test_normalise_stored_by_kind() -> None:
    from medscan.dicom.pixels import normalise_stored

    cells = np.array([0x1FFF, 0x0FFF, 0x1000, 0xF800, 0x0800], dtype=np.uint16)
    np.testing.assert_array_equal(normalise_stored(cells, 12, 11, 0), [4095, 4095, 0, 2048, 2048])
    np.testing.assert_array_equal(
        normalise_stored(cells, 12, 11, 1), [-1, -1, 0, -2048, -2048]
    )
    # HighBit below the cell top with low-order padding bits (BitsStored 12, HighBit 13)
    np.testing.assert_array_equal(normalise_stored(np.array([0x3FFC], np.uint16), 12, 13, 0),
                                  [4095])
    signed = normalise_stored(cells, 12, 11, 1)
    np.testing.assert_array_equal(normalise_stored(signed, 12, 11, 1), signed)  # idempotent
    with pytest.raises(ValueError, match="do not fit"):
        normalise_stored(cells.astype(np.uint8), 12, 11, 0)


# 3. series identity: acquisitions, localizers, stray files -----------------------------------


@pytest.mark.parametrize(
    ("offset_mm", "tag"),
    [(0.0, "AcquisitionNumber"), (4.0, "AcquisitionNumber"), (0.0, "TemporalPositionIdentifier")],
    ids=["same-positions", "interleaved", "temporal-position"],
)
def test_two_acquisitions_become_two_volumes(
    b40f: Path, tmp_path: Path, offset_mm: float, tag: str
) -> None:
    gen.two_acquisitions(b40f, tmp_path, offset_mm=offset_mm, tag=tag)
    found = discover(tmp_path)
    assert len(found.series) == 2, [s.to_dict()["findings"] for s in found.series]
    plain = gdcm_hu(gen.slices(b40f, 8))  # ascending file names = descending z here
    by_phase = {}
    for series in found.series:
        assert "duplicate_position" not in {f.code for f in series.findings}
        assert "acquisition_split" in {f.code for f in series.findings}
        names = {Path(f).name[:2] for f in series.files}
        assert len(names) == 1  # one volume never mixes the two acquisitions
        vol = load(series)
        assert vol.hu.shape == (8, 512, 512)
        by_phase[names.pop()] = vol
    order = [gen.slices(b40f, 8).index(b40f / Path(f).name[3:]) for f in by_phase["p1"].files]
    np.testing.assert_array_equal(hu_of(by_phase["p1"]), plain[order])
    expected2 = np.minimum(plain[order] - plain.min() + 100, 4095) + plain.min()
    assert float(np.mean(hu_of(by_phase["p2"]) - hu_of(by_phase["p1"]))) > 90
    assert np.all(hu_of(by_phase["p2"]) <= expected2 + 1e-3)
    z1 = by_phase["p1"].affine[2, 3]
    z2 = by_phase["p2"].affine[2, 3]
    assert z2 - z1 == pytest.approx(offset_mm)


@pytest.mark.parametrize("tag", ["AcquisitionTime", "AcquisitionNumber"])
def test_per_slice_acquisition_ids_do_not_split(b40f: Path, tmp_path: Path, tag: str) -> None:
    """Per-slice AcquisitionTime (helical scans) or AcquisitionNumber (sequential scanners) is
    not a second acquisition: positions neither repeat nor interleave, one volume."""
    import pydicom

    for k, f in enumerate(gen.slices(b40f, 8)):
        ds = pydicom.dcmread(f)
        setattr(ds, tag, f"1200{k:02d}.000000" if tag == "AcquisitionTime" else k + 1)
        ds.save_as(tmp_path / f.name, enforce_file_format=True)
    found = discover(tmp_path)
    assert [s.n_slices for s in found.series] == [8]
    assert "acquisition_split" not in {f.code for f in found.series[0].findings}


def _tags(series) -> list[str]:
    """The generators' ImageComments (``r<recon>a<phase>-<name>``) of a series, in slice order."""
    import pydicom

    return [str(pydicom.dcmread(f, stop_before_pixels=True).ImageComments) for f in series.files]


@pytest.mark.parametrize(
    ("thickness", "phases"), [(None, 1), (("1", "3"), 1), (None, 2)],
    ids=["kernel", "kernel-and-thickness", "two-phases-two-kernels"],
)
def test_reconstructions_under_one_uid_become_separate_volumes(
    b40f: Path, tmp_path: Path, thickness, phases: int
) -> None:
    """Issue 11 defect 1: two kernels (same AcquisitionNumber and times, same positions, file
    names shuffled) are two volumes, each one kernel, HU of that reconstruction only."""
    gen.two_reconstructions(b40f, tmp_path, thickness=thickness, phases=phases)
    found = discover(tmp_path)
    assert len(found.series) == 2 * phases, [s.to_dict()["findings"] for s in found.series]
    plain = gdcm_hu(gen.slices(b40f, 8))
    names = [p.name for p in gen.slices(b40f, 8)]
    seen = set()
    for series in found.series:
        codes = {f.code for f in series.findings}
        assert "duplicate_position" not in codes and "acquisition_split" in codes
        tags = _tags(series)
        kinds = {t.split("-", 1)[0] for t in tags}
        assert len(kinds) == 1, tags  # never one volume mixing reconstructions
        kind = kinds.pop()
        seen.add(kind)
        (split,) = [f for f in series.findings if f.code == "acquisition_split"]
        assert "ConvolutionKernel" in split.message
        vol = load(series)
        ref = plain[[names.index(t.split("-", 1)[1]) for t in tags]]
        add = 200 * int(kind[1]) + 50 * (int(kind[3]) - 1)
        expected = np.minimum(ref - plain.min() + add, 4095) + plain.min() if add else ref
        np.testing.assert_allclose(hu_of(vol), expected, atol=1e-3)
    assert seen == {f"r{r}a{a}" for r in (0, 1) for a in range(1, phases + 1)}


def test_reconstruction_split_does_not_depend_on_file_names(b40f: Path, tmp_path: Path) -> None:
    gen.two_reconstructions(b40f, tmp_path / "a")
    (tmp_path / "b").mkdir()
    for i, f in enumerate(sorted((tmp_path / "a").iterdir(), reverse=True)):
        (tmp_path / "b" / f"{i:03d}.dcm").write_bytes(f.read_bytes())
    a = sorted(sorted(_tags(s)) for s in discover(tmp_path / "a").series)
    b = sorted(sorted(_tags(s)) for s in discover(tmp_path / "b").series)
    assert a == b and len(a) == 2


def test_acquisitions_told_apart_by_acquisition_time_clusters(b40f: Path, tmp_path: Path) -> None:
    """Issue 11 defect 2: same AcquisitionNumber, per-slice helical times, the second
    acquisition 100 s later and 4 mm offset: two volumes, not one 16-slice 4 mm stack."""
    gen.two_timed_acquisitions(b40f, tmp_path)
    found = discover(tmp_path)
    assert sorted(s.n_slices for s in found.series) == [8, 8]
    plain = gdcm_hu(gen.slices(b40f, 8))
    names = [p.name for p in gen.slices(b40f, 8)]
    for series in found.series:
        tags = _tags(series)
        assert len({t[:2] for t in tags}) == 1, tags
        (split,) = [f for f in series.findings if f.code == "acquisition_split"]
        assert "AcquisitionTime" in split.message
        ref = plain[[names.index(t[3:]) for t in tags]]
        add = 100 if tags[0].startswith("a2") else 0
        expected = np.minimum(ref - plain.min() + add, 4095) + plain.min() if add else ref
        np.testing.assert_allclose(hu_of(load(series)), expected, atol=1e-3)


def test_one_helical_acquisition_is_not_split_by_time(b40f: Path, tmp_path: Path) -> None:
    """The time clusters only split when the gap is >= 10 s: 0.2 s per slice is one scan."""
    gen.two_timed_acquisitions(b40f, tmp_path, delay_s=0.2 * 8, offset_mm=8 * 8.0)
    found = discover(tmp_path)
    assert [s.n_slices for s in found.series] == [16]


@pytest.mark.parametrize(
    ("image_type", "volume"),
    [(["DERIVED", "SECONDARY", "AXIAL"], True), (["DERIVED", "SECONDARY", "MPR"], False),
     (["DERIVED", "SECONDARY", "MIP"], False), (["ORIGINAL", "PRIMARY", "LOCALIZER"], False)],
    ids=["axial-reformat", "mpr", "mip", "localizer"],
)
def test_image_type_decides_volume_or_not(
    b40f: Path, tmp_path: Path, image_type: list[str], volume: bool
) -> None:
    import pydicom

    for f in gen.slices(b40f, 4):
        ds = pydicom.dcmread(f)
        ds.ImageType = image_type
        ds.save_as(tmp_path / f.name, enforce_file_format=True)
    found = discover(tmp_path)
    assert (len(found.series), len(found.other_series)) == ((1, 0) if volume else (0, 1))


def test_localizer_is_a_non_volume_series(b40f: Path, tmp_path: Path) -> None:
    gen.with_localizer(b40f, tmp_path)
    found = discover(tmp_path)
    assert [s.n_slices for s in found.series] == [8]
    assert [s.n_slices for s in found.other_series] == [1]
    scout = found.other_series[0]
    assert [f.code for f in scout.findings if f.severity != "info"] == ["stray_files"]
    assert any(f.code == "non_volume" and "LOCALIZER" in f.message for f in scout.findings)
    vol = load(found.series[0])
    np.testing.assert_array_equal(hu_of(vol), gdcm_hu(originals_in_volume_order(vol, b40f)))


def test_load_path_names_what_it_did_not_load(b40f: Path, tmp_path: Path) -> None:
    """A folder holding only a localizer: the refusal says it is one (not "other modality")."""
    gen.with_localizer(b40f, tmp_path, n=0)
    with pytest.raises(SeriesError, match=r"1 other series not loaded: CT, 1 file\(s\): "
                                          r"localizer image \(ImageType ORIGINAL\\PRIMARY"):
        load_path(tmp_path)


def test_stray_modality_file_does_not_hide_the_ct(b40f: Path, tmp_path: Path) -> None:
    """Issue 19 fault 3: one MR-labelled file with the CT's SeriesInstanceUID, sorting first."""
    stray = gen.with_stray_modality(b40f, tmp_path)
    found = discover(tmp_path)
    assert [(s.modality, s.n_slices) for s in found.series] == [("CT", 8)]
    assert [(s.modality, s.n_slices) for s in found.other_series] == [("MR", 1)]
    other = found.other_series[0]
    assert any(f.code == "stray_files" and str(stray) in f.files for f in other.findings)
    ct = found.series[0]
    assert any(f.code == "mixed_series_files" and str(stray) in f.files for f in ct.findings)
    # the CT keeps the case id it has without the stray file
    clean = discover(b40f)
    assert stray.name not in {Path(f).name for f in ct.files}
    assert load(ct).hu.shape == (8, 512, 512)
    assert ct.case_id in {s.case_id for s in clean.series}


# 4. header sizes vs pixel data; allocation cap ------------------------------------------------


def test_lying_rows_columns_are_skipped_with_reason(b40f: Path, tmp_path: Path) -> None:
    gen.lying_sizes(b40f, tmp_path)
    found = discover(tmp_path)
    assert not found.series and not found.other_series
    assert len(found.skipped) == 12
    for item in found.skipped:
        assert "Rows 65535 x Columns 65535" in item.reason
        assert "needs 8589672450 bytes, PixelData holds 524288" in item.reason


@pytest.mark.parametrize(
    ("series", "syntax"),
    [("ricord-1a-000082-jpegll", None), (gen.B40F, "1.2.840.10008.1.2.4.90")],
    ids=["jpeg-lossless", "j2k"],
)
def test_lying_rows_columns_over_compressed_frames(
    shared_ct: Path, tmp_path: Path, series: str, syntax: str | None
) -> None:
    """Compressed frames carry their own size: a header that disagrees is skipped by name."""
    gen.lying_sizes(shared_ct / series, tmp_path, n=3, syntax=syntax)
    found = discover(tmp_path)
    assert not found.series and len(found.skipped) == 3
    for item in found.skipped:
        assert item.reason.endswith(
            "Rows 65535 x Columns 65535, but the compressed frame is 512 x 512"), item.reason


def test_allocation_cap_is_a_clear_error(b40f: Path, tmp_path: Path, monkeypatch) -> None:
    gen.copy_plain(b40f, tmp_path, 6)
    series = discover(tmp_path).series[0]
    need = 6 * 512 * 512 * 2
    with pytest.raises(SeriesError, match="allocation cap"):
        load(series, max_bytes=need - 1)
    assert load(series, max_bytes=need).hu.shape == (6, 512, 512)
    monkeypatch.setenv("MEDSCAN_MAX_VOLUME_GIB", str((need - 1) / 2**30))
    with pytest.raises(SeriesError, match="MEDSCAN_MAX_VOLUME_GIB"):
        load(series)
    monkeypatch.setenv("MEDSCAN_MAX_VOLUME_GIB", "lots")
    with pytest.raises(SeriesError, match="positive number"):
        load(series)


# 5. any POSIX file name ---------------------------------------------------------------------


def test_latin1_file_name_everywhere(b40f: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    odd = gen.latin1_name(b40f, src)
    found = discover(src)
    assert found.series[0].n_slices == 6 and not found.skipped
    hashes, digest = hash_inputs(found.series[0].files, src)
    assert "scan\\xe9-19.dcm" in hashes and len(digest) == 64
    assert hash_inputs(found.series[0].files, src)[1] == digest
    vol = load(found.series[0])
    assert odd in [Path(f) for f in vol.files]
    proc = subprocess.run(
        [sys.executable, "-m", "medscan.cli", "inspect", "--json", "--files", os.fsdecode(src)],
        capture_output=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    text = proc.stdout.decode("utf-8")  # strict: fails on any invalid UTF-8
    data = json.loads(text)
    names = [Path(f).name for f in data["series"][0]["files"]]
    assert "scan\\xe9-19.dcm" in names
    assert all(not 0xD800 <= ord(c) <= 0xDFFF for c in text)


# Also: enhanced multi-frame, one-slice series, block_mean -----------------------------------


@pytest.mark.parametrize("syntax", [None, "1.2.840.10008.1.2.5"], ids=["native", "rle"])
def test_enhanced_ct_loads_from_functional_groups(
    b40f: Path, tmp_path: Path, syntax: str | None
) -> None:
    """The frames of an Enhanced CT file are placed by their functional groups: same HU (GDCM
    on the single-frame originals) and the same affine as the single-frame series."""
    gen.enhanced_ct(b40f, tmp_path / "enh", n=6, syntax=syntax)
    found = discover(tmp_path / "enh")
    assert [s.n_slices for s in found.series] == [6]
    series = found.series[0]
    assert not [f for f in series.findings if f.severity != "info"], series.findings
    vol = load(series)
    originals = gen.copy_plain(b40f, tmp_path / "plain", 6)
    plain = load(discover(tmp_path / "plain").series[0])
    np.testing.assert_allclose(vol.affine, plain.affine, atol=1e-6)
    expected = gdcm_hu(originals_in_volume_order(plain, b40f))
    np.testing.assert_array_equal(hu_of(vol), expected)
    assert {Path(f).name for f in originals} == {Path(f).name for f in plain.files}


def test_enhanced_ct_without_positions_is_refused_with_one_true_reason(
    b40f: Path, tmp_path: Path
) -> None:
    gen.enhanced_ct(b40f, tmp_path, positions=False)
    found = discover(tmp_path)
    assert len(found.series) == 1
    codes = [f.code for f in found.series[0].findings]
    assert codes == ["unsupported_layout"]  # no false no_geometry / no_pixel_spacing
    with pytest.raises(SeriesError, match=r"Enhanced CT Image Storage .*frame 1 has no"):
        load(found.series[0])


def test_block_mean_keeps_every_slice() -> None:
    be = get_backend("cpu")
    rng = np.random.default_rng(3)
    for shape in [(1, 7, 9), (5, 6, 6), (3, 5, 11)]:
        arr = rng.integers(-1000, 1000, shape).astype(np.int16)
        for f in [(2, 2, 2), (1, 3, 2), (4, 1, 5)]:
            low = block_mean(be, arr, f)
            assert low.shape == tuple(-(-n // k) for n, k in zip(shape, f, strict=True))
            for idx in np.ndindex(*low.shape):
                block = arr[tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, f, strict=True))]
                assert low[idx] == pytest.approx(block.mean(), abs=1e-3)


def test_one_slice_series_segments(b40f: Path, tmp_path: Path) -> None:
    from medscan.ct.segment import segment
    from medscan.ct.tissues import default_tissues

    gen.one_thin_slice(b40f, tmp_path)
    vol = load(discover(tmp_path).series[0])
    assert vol.hu.shape[0] == 1 and vol.spacing[0] == pytest.approx(0.5)
    assert block_factors(vol.spacing, 1.5)[0] == 3  # the default working grid: z factor 3
    seg = segment(vol, default_tissues())
    assert "no voxel above the body threshold" not in (seg.reason or "")
    assert seg.labels.shape == vol.hu.shape and seg.labels.any()


def test_segment_batch_counts_refusals_and_survives_odd_names(
    shared_ct: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch with a Latin-1 file name, a stray MR file and a series in an unsupported syntax:
    index.csv is written, the CT case is ok, the refused one is a failed case, exit code 1."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from medscan.ct.job import run_segment
    from medscan.io import read_index

    src = tmp_path / "in"
    gen.with_stray_modality(shared_ct / gen.B40F, src / "a", n=10)
    gen.rename_latin1(gen.slices(src / "a")[-1])
    gen.unsupported_syntax(shared_ct / "lungdx-a0002-b70f", src / "c")
    out = tmp_path / "out"
    with initialize_config_module(config_module="medscan_conf", version_base="1.3"):
        cfg = compose("segment", overrides=[f"input={src}", f"output={out}", "progress=false"])
    code = run_segment(OmegaConf.to_container(cfg, resolve=True))
    rows = read_index(out)
    assert code == 1
    status = sorted(r["status"] for r in rows)
    assert status == ["failed", "ok"], rows
    failed = next(r for r in rows if r["status"] == "failed")
    assert "unsupported transfer syntax MPEG2" in failed["reason"]
    stray = [r for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(stray) == 1 and "(MR, 1 file(s))" in stray[0].getMessage()
