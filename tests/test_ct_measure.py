"""Issue 14 measurements vs independent computations on real data.

References share no code with :mod:`medscan.ct.measure` / ``density`` / ``regions`` /
``structures``: the volume and label map are written as NIfTI, read back with nibabel (NumPy on
the written outputs) and with SimpleITK (``LabelStatisticsImageFilter``,
``LabelShapeStatisticsImageFilter``: physical points in LPS, SimpleITK's own NIfTI reader turns
the file's RAS affine into LPS).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from ct_reference import load_series, reoriented

from medscan.ct.density import DensityBand, DensityBands, default_density_bands
from medscan.ct.measure import MeasureOptions, measure_case
from medscan.ct.segment import segment
from medscan.ct.tissues import default_tissues
from medscan.volume import Label, LabelMap, Volume

#: LCTA defaults written out here (not read from conf/): the config must say the same.
LCTA = [("emphysema", -1050, -950), ("inflated", -950, -750), ("infiltrated", -750, -400),
        ("collapsed", -400, 0), ("vessels", 0, 3000)]


@lru_cache(maxsize=4)
def _case(folder: str) -> tuple[Volume, np.ndarray]:
    volume = load_series(folder)
    labels = segment(volume, default_tissues()).labels
    labels.setflags(write=False)
    return volume, labels


@pytest.fixture(scope="module", params=["sample", "lungdx-a0001-chest-5mm"])
def case(request, sample_ct):
    """(volume, labels, metrics, NIfTI folder) of the sample and a shared chest series."""
    if request.param == "sample":
        folder = sample_ct
    else:
        folder = request.getfixturevalue("shared_ct") / request.param
    volume, labels = _case(str(folder))
    metrics, _ = measure_case(volume, labels, default_tissues())
    out = Path(request.getfixturevalue("tmp_path_factory").mktemp("nifti"))
    import nibabel as nib

    volume.to_nifti(out / "volume.nii.gz")
    # the label map written by nibabel itself, (x, y, z) with the volume's RAS affine
    nib.save(nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)),
                             volume.nifti_affine()), str(out / "labels.nii.gz"))
    return volume, labels, metrics, out


def _nifti_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, labels (x, y, z as stored) and the RAS affine, read with nibabel only."""
    import nibabel as nib

    hu = nib.load(str(folder / "volume.nii.gz"))
    lab = nib.load(str(folder / "labels.nii.gz"))
    return np.asanyarray(hu.dataobj), np.asanyarray(lab.dataobj), hu.affine


def test_band_config_is_the_lung_ct_analyzer_default():
    bands = default_density_bands()
    assert [(b.name, b.hu_min, b.hu_max) for b in bands.bands] == LCTA
    assert bands.functional == ["inflated"]
    assert bands.affected == ["infiltrated", "collapsed"]
    assert bands.vessels == "vessels"


def test_band_intervals_are_half_open_and_cover_every_value():
    bands = default_density_bands()
    hu = np.array([-3024, -1051, -1050, -951, -950, -751, -750, -401, -400, -1, 0, 2999, 3000,
                   3071], np.int16)
    names = [bands.entries[i] for i in bands.bin_index(hu)]
    assert names == ["below_range", "below_range", "emphysema", "emphysema", "inflated",
                     "inflated", "infiltrated", "infiltrated", "collapsed", "collapsed",
                     "vessels", "vessels", "above_range", "above_range"]


@pytest.mark.parametrize("bad", [
    [DensityBand("a", -1000, -900), DensityBand("b", -800, 0)],     # gap
    [DensityBand("a", -1000, -900), DensityBand("b", -950, 0)],     # overlap
    [DensityBand("a", -900, -1000)],                                 # empty
])
def test_bands_must_be_sorted_and_contiguous(bad):
    with pytest.raises(ValueError, match="density band"):
        DensityBands(bad, vessels=None, functional=[], affected=[])


def test_volumes_and_hu_stats_equal_simpleitk_label_statistics(case):
    import SimpleITK as sitk

    _volume, _labels, metrics, folder = case
    hu_img = sitk.ReadImage(str(folder / "volume.nii.gz"), sitk.sitkFloat64)
    lab_img = sitk.ReadImage(str(folder / "labels.nii.gz"), sitk.sitkUInt8)
    stats = sitk.LabelStatisticsImageFilter()
    stats.Execute(hu_img, lab_img)
    voxel_ml = float(np.prod(lab_img.GetSpacing())) / 1000.0
    seen = 0
    for name, entry in metrics["structures"].items():
        label = entry["label"]
        if not stats.HasLabel(label):
            assert entry["voxels"] == 0, name
            continue
        seen += 1
        n = stats.GetCount(label)
        assert entry["voxels"] == n, name
        assert entry["volume_ml"] == pytest.approx(n * voxel_ml, abs=1e-3), name
        assert entry["mean_hu"] == pytest.approx(stats.GetMean(label), abs=1e-3), name
        # ITK's sigma is the sample standard deviation (n - 1); ours the population one
        assert entry["std_hu"] == pytest.approx(
            stats.GetSigma(label) * np.sqrt((n - 1) / n), abs=1e-3), name
        assert entry["min_hu"] == stats.GetMinimum(label), name
        assert entry["max_hu"] == stats.GetMaximum(label), name
        # the base block keeps its keys and agrees
        assert metrics["tissues"][name]["voxels"] == n
    assert seen >= 6


def test_percentiles_equal_numpy_on_the_nifti_outputs(case):
    _volume, _labels, metrics, folder = case
    hu, lab, _ = _nifti_arrays(folder)
    for name, entry in metrics["structures"].items():
        values = hu[lab == entry["label"]]
        if values.size == 0:
            continue
        p5, p50, p95 = np.percentile(values.astype(np.float64), [5, 50, 95])
        assert entry["p5_hu"] == pytest.approx(p5, abs=1e-3), name
        assert entry["median_hu"] == pytest.approx(p50, abs=1e-3), name
        assert entry["p95_hu"] == pytest.approx(p95, abs=1e-3), name


def test_centroid_and_bbox_equal_simpleitk_shape_statistics(case):
    import SimpleITK as sitk

    _volume, _labels, metrics, folder = case
    lab_img = sitk.ReadImage(str(folder / "labels.nii.gz"), sitk.sitkUInt8)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(lab_img)
    for entry in metrics["structures"].values():
        label = entry["label"]
        if not shape.HasLabel(label):
            continue
        # SimpleITK's physical space is LPS, as medscan's: no sign flips
        assert entry["centroid_lps_mm"] == pytest.approx(shape.GetCentroid(label), abs=0.01)
        assert entry["volume_ml"] == pytest.approx(
            shape.GetPhysicalSize(label) / 1000.0, abs=1e-3)
        x0, y0, z0, sx, sy, sz = shape.GetBoundingBox(label)
        corners = np.array([lab_img.TransformIndexToPhysicalPoint((x, y, z))
                            for x in (x0, x0 + sx - 1) for y in (y0, y0 + sy - 1)
                            for z in (z0, z0 + sz - 1)])
        assert entry["bbox_lps_mm"]["min"] == pytest.approx(corners.min(axis=0), abs=0.01)
        assert entry["bbox_lps_mm"]["max"] == pytest.approx(corners.max(axis=0), abs=0.01)


def test_density_bands_equal_numpy_and_sum_to_the_lung(case):
    _volume, _labels, metrics, folder = case
    hu, lab, _ = _nifti_arrays(folder)
    tissues = default_tissues()
    density = metrics["density_bands"]
    lungs = {"lung_right": lab == tissues["lung_right"].label,
             "lung_left": lab == tissues["lung_left"].label}
    lungs["total"] = lungs["lung_right"] | lungs["lung_left"]
    for name, mask in lungs.items():
        values = hu[mask]
        entry = density[name]
        assert entry["voxels"] == values.size
        for band, lo, hi in LCTA:
            assert entry["bands"][band]["voxels"] == np.count_nonzero(
                (values >= lo) & (values < hi)), (name, band)
        assert entry["bands"]["below_range"]["voxels"] == np.count_nonzero(values < -1050)
        assert entry["bands"]["above_range"]["voxels"] == np.count_nonzero(values >= 3000)
        assert sum(b["voxels"] for b in entry["bands"].values()) == values.size
        assert sum(b["percent"] for b in entry["bands"].values()) == pytest.approx(100, abs=0.01)
        assert sum(b["ml"] for b in entry["bands"].values()) == pytest.approx(
            entry["volume_ml"], abs=0.01)
        vessels = np.count_nonzero((values >= 0) & (values < 3000))
        parenchyma = values.size - vessels
        inflated = np.count_nonzero((values >= -950) & (values < -750))
        affected = np.count_nonzero((values >= -750) & (values < 0))
        assert entry["functional_percent"] == pytest.approx(100 * inflated / parenchyma,
                                                            abs=1e-3)
        assert entry["affected_percent"] == pytest.approx(100 * affected / parenchyma, abs=1e-3)
        # %LAA-950 stays, and is the bands below -950 HU
        below = entry["bands"]["emphysema"]["voxels"] + entry["bands"]["below_range"]["voxels"]
        assert entry["laa950_percent"] == pytest.approx(100 * below / values.size, abs=1e-3)
    assert metrics["laa950_percent"] == pytest.approx(density["total"]["laa950_percent"],
                                                      abs=1e-3)
    assert metrics["lung_volume_ml"] == pytest.approx(density["total"]["volume_ml"], abs=1e-3)


def _reference_regions(hu: np.ndarray, mask: np.ndarray, affine_ras: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """Region masks of one lung from the NIfTI (x, y, z) arrays and RAS affine (NumPy only)."""
    from nibabel.affines import apply_affine

    ijk = np.argwhere(mask)                       # NIfTI array order is (i, j, k)
    ras = apply_affine(affine_ras, ijk)
    s = ras[:, 2]                                 # S is +z in RAS and in LPS
    posterior = -ras[:, 1]                        # LPS y = -RAS y
    h = s.max() - s.min()
    mid = (posterior.min() + posterior.max()) / 2
    tie = 1e-6  # a centre on a cut (within 1 nm) goes to the upper / dorsal side
    cut_low, cut_high = s.min() + h / 3 - tie, s.min() + 2 * h / 3 - tie
    return {
        "upper": s >= cut_high,
        "middle": (s >= cut_low) & (s < cut_high),
        "lower": s < cut_low,
        "ventral": posterior < mid - tie,
        "dorsal": posterior >= mid - tie,
        "_values": hu[mask],
    }


def test_regions_equal_numpy_and_partition_each_lung(case):
    _volume, _labels, metrics, folder = case
    hu, lab, affine = _nifti_arrays(folder)
    tissues = default_tissues()
    regions = metrics["regions"]
    for lung in ("lung_right", "lung_left"):
        ref = _reference_regions(hu, lab == tissues[lung].label, affine)
        values = ref.pop("_values")
        ours = regions[lung]
        for name, sel in ref.items():
            assert ours[name]["voxels"] == np.count_nonzero(sel), (lung, name)
            assert ours[name]["mean_hu"] == pytest.approx(values[sel].mean(), abs=0.006)
            assert ours[name]["laa950_percent"] == pytest.approx(
                100 * np.count_nonzero(values[sel] < -950) / sel.sum(), abs=1e-3)
        n = metrics["density_bands"][lung]["voxels"]
        for scheme in (("upper", "middle", "lower"), ("ventral", "dorsal")):
            assert sum(ours[r]["voxels"] for r in scheme) == n
            for band in metrics["density_bands"][lung]["bands"]:
                assert sum(ours[r]["bands"][band]["voxels"] for r in scheme) == \
                    metrics["density_bands"][lung]["bands"][band]["voxels"], (lung, band)
    for r in ("upper", "middle", "lower", "ventral", "dorsal"):
        assert regions["total"][r]["voxels"] == (regions["lung_right"][r]["voxels"]
                                                 + regions["lung_left"][r]["voxels"])


def test_regions_follow_patient_space_not_the_array(sample_ct):
    """The same voxels stored another way, and a tilted affine, give regions in LPS."""
    volume, labels = _case(str(sample_ct))
    tissues = default_tissues()
    base, _ = measure_case(volume, labels, tissues)
    # stored upside down and transposed: the same regions, voxel for voxel
    other = reoriented(volume, (0, 2, 1), (True, False, True))
    other_labels = reoriented(Volume(labels, volume.affine), (0, 2, 1), (True, False, True)).hu
    moved, _ = measure_case(other, other_labels, tissues)
    for lung in ("lung_right", "lung_left", "total"):
        for r in ("upper", "middle", "lower", "ventral", "dorsal"):
            assert moved["regions"][lung][r]["voxels"] == base["regions"][lung][r]["voxels"]
            assert moved["regions"][lung][r]["mean_hu"] == base["regions"][lung][r]["mean_hu"]
    for name, entry in base["structures"].items():
        assert moved["structures"][name]["centroid_lps_mm"] == pytest.approx(
            entry["centroid_lps_mm"], abs=0.01)
        assert moved["structures"][name]["bbox_lps_mm"] == entry["bbox_lps_mm"]
    # tilted 25 degrees about the L axis: S is no longer the slice index
    angle = np.deg2rad(25.0)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    tilted = Volume(volume.hu, rot @ volume.affine, case_id="tilted")
    got, _ = measure_case(tilted, labels, tissues)
    import nibabel as nib

    for lung in ("lung_right", "lung_left"):
        mask = (labels == tissues[lung].label).transpose(2, 1, 0)
        ref = _reference_regions(volume.hu.transpose(2, 1, 0), mask, tilted.nifti_affine())
        ref.pop("_values")
        for name, sel in ref.items():
            assert got["regions"][lung][name]["voxels"] == np.count_nonzero(sel), (lung, name)
        assert got["regions"][lung]["upper"]["voxels"] != base["regions"][lung]["upper"]["voxels"]
        # oblique bounding box: every voxel centre, mapped through the affine
        ijk = np.argwhere(mask)
        lps = nib.affines.apply_affine(tilted.affine, ijk)
        box = got["structures"][lung]["bbox_lps_mm"]
        assert box["min"] == pytest.approx(lps.min(axis=0), abs=0.01)
        assert box["max"] == pytest.approx(lps.max(axis=0), abs=0.01)


def test_any_label_table_without_lungs(sample_ct):
    """A label map from another tool: its own names, no lungs -> lung blocks null/empty."""
    volume, labels = _case(str(sample_ct))
    other = np.where(labels == 5, 1, np.where(labels == 4, 2, 0)).astype(np.uint8)
    metrics, _ = measure_case(volume, other, {1: "ribs", 2: "muscle"})
    assert metrics["lung_volume_ml"] is None and metrics["lung_complete"] is None
    assert set(metrics["structures"]) == {"ribs", "muscle"}
    assert metrics["structures"]["ribs"]["voxels"] == np.count_nonzero(labels == 5)
    assert metrics["regions"] == {}
    assert set(metrics["density_bands"]) == {"definition"}


def test_completeness_flag_per_structure(case):
    _volume, _labels, metrics, _folder = case
    for name in ("lung_right", "lung_left"):
        if name in metrics["coverage"]:
            assert metrics["structures"][name]["complete"] == \
                metrics["coverage"][name]["complete"]
    # soft tissue of a chest CT always continues above and below the scan range
    soft = metrics["structures"]["soft_tissue"]
    assert soft["complete"] is False
    assert {"superior", "inferior"} <= set(soft["contact_cm2"])


def test_surface_area_from_the_meshes(sample_ct):
    from medscan.ct.mesh import MeshParams, label_surface

    volume, labels = _case(str(sample_ct))
    tissues = default_tissues()
    mesh = label_surface(labels, tissues["lung_left"].label, volume.affine, MeshParams())
    metrics, _ = measure_case(volume, labels, tissues, MeasureOptions(),
                              surfaces={"lung_left": mesh})
    assert metrics["structures"]["lung_left"]["surface_area_mm2"] == pytest.approx(
        float(np.linalg.norm(np.cross(*(mesh.vertices[mesh.faces[:, 1:]]
                                        - mesh.vertices[mesh.faces[:, :1]]).transpose(1, 0, 2)),
                             axis=1).sum() / 2), rel=1e-6)
    assert metrics["structures"]["lung_right"]["surface_area_mm2"] is None


def test_label_map_must_share_the_grid(sample_ct):
    volume, labels = _case(str(sample_ct))
    with pytest.raises(ValueError, match="shape"):
        measure_case(volume, labels[1:], default_tissues())
    with pytest.raises(ValueError, match="uint8"):
        measure_case(volume, labels.astype(np.int32), default_tissues())
    shifted = volume.affine.copy()
    shifted[0, 3] += 5.0
    with pytest.raises(ValueError, match="affine"):
        measure_case(volume, LabelMap(np.asarray(labels), shifted), default_tissues())
    # a LabelMap on the grid carries its own table: the same numbers as the tissue table's
    table = {t.label: Label(t.label, t.name, t.color) for t in default_tissues().all}
    own, _ = measure_case(volume, LabelMap(np.asarray(labels), volume.affine, table))
    ref, _ = measure_case(volume, labels, default_tissues())
    assert own == ref


def test_gantry_tilted_head_ct_regions_and_boxes_in_patient_space(shared_ct_qa):
    """A real gantry-tilted series (sheared affine): regions, centroid and box through it."""
    from nibabel.affines import apply_affine

    volume = load_series(str(shared_ct_qa / "ge-head-tilt-uneven"))
    assert abs(volume.affine[2, 1]) > 0.1  # rows run partly along S: the tilt
    labels = segment(volume, default_tissues()).labels
    # the head's soft tissue measured as if it were a lung: regions need only a lung label
    metrics, _ = measure_case(volume, labels, {4: "lung_right", 5: "bone"})
    vol_t = volume.hu.transpose(2, 1, 0)
    for label, name in ((4, "lung_right"), (5, "bone")):
        mask = (labels == label).transpose(2, 1, 0)
        lps = apply_affine(volume.affine, np.argwhere(mask))
        entry = metrics["structures"][name]
        assert entry["centroid_lps_mm"] == pytest.approx(lps.mean(axis=0), abs=0.01)
        assert entry["bbox_lps_mm"]["min"] == pytest.approx(lps.min(axis=0), abs=0.01)
        assert entry["bbox_lps_mm"]["max"] == pytest.approx(lps.max(axis=0), abs=0.01)
    mask = (labels == 4).transpose(2, 1, 0)
    ref = _reference_regions(vol_t, mask, volume.nifti_affine())
    ref.pop("_values")
    by_index = np.argwhere(mask)[:, 2]  # slice index: what a by-array split would use
    for name, sel in ref.items():
        assert metrics["regions"]["lung_right"][name]["voxels"] == np.count_nonzero(sel), name
    k_cut = by_index.min() + 2 * (by_index.max() - by_index.min()) / 3
    assert np.count_nonzero(ref["upper"]) != np.count_nonzero(by_index >= k_cut)
