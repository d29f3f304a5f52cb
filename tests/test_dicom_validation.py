"""Issue 19 faults 2 and 6: every number that enters geometry or HU is checked; bad ones are named
refusals (no NaN HU, no singular or non-finite affine, no ZeroDivisionError, no huge grid).

Inputs are the embedded real sample with one header value damaged (``tests/dicom_faults.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dicom_faults as faults
import numpy as np
import pytest

from medscan.dicom import SeriesError, discover, load, regularize_stack
from medscan.dicom.resample import MAX_RESAMPLE_GROWTH
from medscan.io import read_index

MEDSCAN = [sys.executable, "-m", "medscan.cli"]


@pytest.fixture()
def series_dir(sample_ct: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "s"
    shutil.copytree(sample_ct, dst)
    return dst


# (generator, finding code); each generator damages the copied sample in one way.
CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "ipp-20m-off-last": (lambda d: faults.position_outlier(d, -1), "position_outlier"),
    "ipp-20m-off-first": (lambda d: faults.position_outlier(d, 0, -20_000.0), "position_outlier"),
    "ipp-1e9-mm": (faults.far_position, "implausible_position"),
    "ipp-x-plus-40mm": (lambda d: faults.inplane_shift(d, 12, 40.0), "position_outlier"),
    "ipp-x-plus-20m": (lambda d: faults.inplane_shift(d, 5, 20_000.0), "position_outlier"),
    "ipp-y-minus-2mm": (lambda d: faults.inplane_shift(d, 0, 0.0, -2.0), "position_outlier"),
    "all-at-one-position": (faults.same_position, "duplicate_geometry"),
    "slope-nan": (lambda d: faults.rescale_slope(d, "nan"), "bad_rescale"),
    "slope-inf": (lambda d: faults.rescale_slope(d, "inf"), "bad_rescale"),
    "slope-zero": (lambda d: faults.rescale_slope(d, "0"), "bad_rescale"),
    "slope-negative": (lambda d: faults.rescale_slope(d, "-1"), "bad_rescale"),
    "slope-1e30": (lambda d: faults.rescale_slope(d, "1e30"), "bad_rescale"),
    "slope-not-a-number": (lambda d: faults.rescale_slope(d, "abc"), "bad_rescale"),
    "intercept-nan": (lambda d: faults.rescale_intercept(d, "nan"), "bad_rescale"),
    "intercept--inf": (lambda d: faults.rescale_intercept(d, "-inf"), "bad_rescale"),
    "spacing-zero": (lambda d: faults.pixel_spacing(d, ["0", "0"]), "bad_pixel_spacing"),
    "spacing-negative": (lambda d: faults.pixel_spacing(d, ["-0.5", "0.5"]), "bad_pixel_spacing"),
    "spacing-nan": (lambda d: faults.pixel_spacing(d, ["nan", "nan"]), "bad_pixel_spacing"),
    "bits-stored-255": (lambda d: faults.set_header(faults.sorted_slices(d)[4], BitsStored=255),
                        "bad_pixel_module"),
    "bits-stored-0": (lambda d: faults.set_header(faults.sorted_slices(d)[4], BitsStored=0),
                      "bad_pixel_module"),
    "orientation-zero": (lambda d: faults.orientation(d, ["0"] * 6), "bad_orientation"),
    "orientation-parallel": (lambda d: faults.orientation(d, ["1", "0", "0", "1", "0", "0"]),
                             "bad_orientation"),
    "orientation-not-unit": (lambda d: faults.orientation(d, ["2", "0", "0", "0", "2", "0"]),
                             "bad_orientation"),
}


@pytest.mark.parametrize("uniform", [False, True], ids=["acquired", "uniform"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_number_is_a_named_refusal(series_dir: Path, case: str, uniform: bool) -> None:
    make, code = CASES[case]
    make(series_dir)
    found = discover(series_dir)
    assert found.series, found.skipped
    refused = 0
    for series in found.series:
        codes = {f.code for f in series.findings if f.severity == "error"}
        try:
            vol = load(series, uniform=uniform)
        except SeriesError as exc:
            assert code in str(exc) or codes, exc
            refused += 1
            continue
        # what loads is complete, finite and sane
        assert np.all(np.isfinite(vol.affine)) and np.all(np.isfinite(vol.hu))
        assert abs(np.linalg.det(vol.affine[:3, :3])) > 0
        assert vol.hu.shape[0] <= 30
    all_codes = {f.code for s in found.series for f in s.findings}
    assert code in all_codes
    assert refused >= 1


def test_refusal_names_the_file(series_dir: Path) -> None:
    victim = faults.rescale_slope(series_dir, "nan")
    with pytest.raises(SeriesError, match=f"bad_rescale.*{victim.name}"):
        load(discover(series_dir).series[0])
    victim = faults.position_outlier(series_dir, -1)
    with pytest.raises(SeriesError, match=f"position_outlier.*{victim.name}"):
        load(discover(series_dir).series[0], uniform=True)


def test_intact_sample_has_no_validation_finding(sample_ct: Path) -> None:
    """The checks do not fire on real data (the test fails if the limits are too tight)."""
    (series,) = discover(sample_ct).series
    assert not [f for f in series.findings if f.severity == "error"]
    vol = load(series, uniform=True)
    assert vol.hu.shape == (30, 512, 512)


def test_real_uneven_tilted_series_still_resamples(shared_ct_qa: Path) -> None:
    """A real gantry-tilted stack with uneven steps (4.2 / 1.1 / 7.4 mm) is not an outlier and
    its uniform grid (about 1.4x the slices) stays under the growth limit."""
    (series,) = discover(shared_ct_qa / "ge-head-tilt-uneven").series
    assert not [f for f in series.findings if f.severity == "error"]
    vol = load(series, uniform=True)
    assert series.n_slices < vol.hu.shape[0] <= MAX_RESAMPLE_GROWTH * series.n_slices


def test_huge_gap_refuses_the_uniform_grid_but_keeps_acquired(series_dir: Path) -> None:
    faults.keep_ends(series_dir, 3)  # 6 slices spanning the 30-slice extent: a 5x grid
    (series,) = discover(series_dir).series
    assert "missing_slices" in {f.code for f in series.findings}
    with pytest.raises(SeriesError, match=r"cannot resample.*more than 4x"):
        load(series, uniform=True)
    assert load(series).hu.shape[0] == 6  # the acquired slices, with the gap finding


def test_regularize_stack_refuses_a_huge_grid() -> None:
    hu = np.zeros((4, 2, 2), np.int16)
    z = np.array([0.0, 1.0, 2.0, 20_000.0])
    positions = np.stack([np.zeros(4), np.zeros(4), z], axis=1)
    with pytest.raises(ValueError, match="would need 20001 slices"):
        regularize_stack(hu, positions, np.eye(4))
    same = np.zeros((2, 3))
    with pytest.raises(ValueError, match="coincide"):
        regularize_stack(hu[:2], same, np.eye(4))


def test_single_slice_with_bad_thickness_is_refused(series_dir: Path) -> None:
    for f in faults.sorted_slices(series_dir)[1:]:
        f.unlink()
    faults.set_header(faults.sorted_slices(series_dir)[0], SliceThickness="nan")
    with pytest.raises(SeriesError, match="degenerate_affine"):
        load(discover(series_dir).series[0])


def test_segment_batch_refuses_bad_geometry_by_name(sample_ct: Path, tmp_path: Path) -> None:
    """The issue's instances through the job: each series fails fast with its reason, no
    traceback, exit 1 (before: a 2500-slice resample with status ok after 325 s, NaN HU ok,
    ZeroDivisionError)."""
    tree = tmp_path / "in"
    makers = {"outlier": lambda d: faults.position_outlier(d, -1),
              "nan-slope": lambda d: faults.rescale_slope(d, "nan"),
              "zero-spacing": lambda d: faults.pixel_spacing(d, ["0", "0"]),
              "zero-orientation": lambda d: faults.orientation(d, ["0"] * 6)}
    for i, (name, make) in enumerate(makers.items()):
        dst = tree / name
        shutil.copytree(sample_ct, dst)
        for f in faults.sorted_slices(dst):  # a distinct series per folder
            faults.set_header(f, SeriesInstanceUID=f"1.2.826.0.1.3680043.8.498.19{i}",
                              SOPInstanceUID=f"1.2.826.0.1.3680043.8.498.19{i}.{f.stem[-2:]}")
        make(dst)
    out = tmp_path / "out"
    r = subprocess.run([*MEDSCAN, "segment", f"input={tree}", f"output={out}", "progress=false"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    rows = read_index(out)
    assert len(rows) == 4 and all(row["status"] == "failed" for row in rows), rows
    reasons = " ".join(row["reason"] for row in rows)
    for code in ("position_outlier", "bad_rescale", "bad_pixel_spacing", "bad_orientation"):
        assert code in reasons, reasons


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders without read permission; "
                    "needs an unprivileged user to make a folder unreadable")
def test_unreadable_folder_is_reported(sample_ct: Path, tmp_path: Path) -> None:
    """Issue 19 fault 6: a folder without read permission is listed with its reason."""
    shutil.copytree(sample_ct, tmp_path / "good")
    locked = tmp_path / "locked"
    shutil.copytree(sample_ct, locked)
    locked.chmod(0)
    try:
        found = discover(tmp_path)
    finally:
        locked.chmod(0o755)
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert "unreadable folder" in reasons["locked"], reasons
    assert len(found.series) == 1


def test_symlinked_series_folders_are_followed_once(sample_ct: Path, tmp_path: Path) -> None:
    """Archives are often trees of links: a series behind a symlinked folder is found (it was
    skipped: "0 CT series found", exit 0); a link back to an ancestor does not loop, and a
    series reached through two links is read once (no duplicate slices)."""
    from medscan.dicom import discover, iter_files

    root = tmp_path / "archive"
    (root / "patient").mkdir(parents=True)
    (root / "patient" / "series").symlink_to(sample_ct, target_is_directory=True)
    (root / "patient" / "again").symlink_to(sample_ct, target_is_directory=True)
    (root / "patient" / "loop").symlink_to(root, target_is_directory=True)
    n = len(list(sample_ct.glob("*.dcm")))
    files = list(iter_files(root))
    assert len({p.resolve() for p in files}) == len(files)
    assert sum(p.suffix == ".dcm" for p in files) == n
    found = discover(root)
    assert len(found.series) == 1 and found.series[0].n_slices == n
    assert not [f for f in found.series[0].findings if "duplicate" in f.code]


def test_vanished_root_folder_is_reported(tmp_path: Path) -> None:
    """The walk's error handler also reports a folder that cannot be listed for another reason
    (here: the root is a symlink to a folder that no longer exists)."""
    from medscan.dicom import iter_files
    from medscan.dicom.headers import SkippedFile

    link = tmp_path / "scans"
    link.symlink_to(tmp_path / "gone", target_is_directory=True)
    errors: list[SkippedFile] = []
    assert list(iter_files(link, errors)) == []
    assert [e.reason.split(":")[0] for e in errors] == ["unreadable folder"]


def test_theil_sen_equals_scipy_theilslopes() -> None:
    """The in-plane check's Theil-Sen line is scipy's point estimate, bit for bit (issue 15:
    written in medscan only to keep :mod:`scipy.stats`'s import out of every header read)."""
    from scipy.stats import theilslopes

    from medscan.dicom.validate import theil_sen

    rng = np.random.default_rng(15)
    for n in (2, 3, 7, 64, 255):
        x = np.cumsum(rng.choice([0.5, 1.0, 1.25, 0.0], size=n))  # ties in x (duplicates)
        y = 0.3 * x - 12.0 + rng.normal(0, 0.05, n)
        out = rng.random(n) < 0.2
        y[out] += rng.normal(0, 40, int(out.sum()))  # gross outliers
        if np.ptp(x) == 0:
            continue
        ref = theilslopes(y, x)
        assert theil_sen(x, y) == (ref.slope, ref.intercept)
    slope, intercept = theil_sen(np.zeros(4), np.arange(4.0))
    assert np.isnan(slope) and np.isnan(intercept)
