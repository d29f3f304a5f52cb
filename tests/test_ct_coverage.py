"""Coverage: a lung cut by the scan range or the field of view is reported incomplete.

Real series cropped to stop mid-lung (what a shorter scan range of the same patient stores),
or with a field of view that cuts through a lung, against the full series.
"""

from __future__ import annotations

import numpy as np
import pytest
from ct_reference import cropped, load_series, lung_z_range, segment_series

from medscan.ct.analyse import CaseOptions
from medscan.ct.job import write_volume_case
from medscan.ct.measure import add_coverage, lung_coverage, measure
from medscan.ct.segment import segment
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, default_tissues
from medscan.io import read_case, read_index
from medscan.volume import AIR_HU


@pytest.fixture(scope="module")
def tissues():
    return default_tissues()


def coverage_of(volume, tissues, folder=None):
    seg = segment_series(str(folder)) if folder is not None else segment(volume, tissues)
    assert seg.lungs_found, seg.reason
    return seg, *lung_coverage(volume.hu, seg.labels, volume.affine, tissues)


def lung_ids(tissues):
    return (tissues[LUNG_LEFT].label, tissues[LUNG_RIGHT].label)


@pytest.mark.parametrize("series", [
    "lungdx-a0001-chest-5mm",
    pytest.param("ricord-1a-000082-jpegll", marks=pytest.mark.slow),
])
def test_range_stopping_mid_lung_is_incomplete(series, shared_ct, tissues):
    volume = load_series(str(shared_ct / series))
    seg, coverage, findings = coverage_of(volume, tissues, shared_ct / series)
    # the full series holds both lungs with room above and below
    assert coverage[LUNG_LEFT]["complete"] and coverage[LUNG_RIGHT]["complete"], coverage
    assert not [f for f in findings if f.code == "lung_truncated"]
    lo, hi = lung_z_range(seg.labels, lung_ids(tissues))
    middle = (lo + hi) // 2
    # the canonical z axis of these series runs toward the head: [:middle] keeps the bases
    assert volume.affine[2, 2] > 0
    for part, face in ((slice(0, middle), "superior"), (slice(middle, None), "inferior")):
        sub = cropped(volume, z=part)
        _seg, cov, found = coverage_of(sub, tissues)
        for name in (LUNG_LEFT, LUNG_RIGHT):
            assert not cov[name]["complete"], (face, cov)
            assert cov[name]["contact_cm2"][face] > 10, (face, cov)
        assert {f.details["structure"] for f in found if f.code == "lung_truncated"} == {
            LUNG_LEFT, LUNG_RIGHT}


def test_field_of_view_cutting_a_lung_is_incomplete(shared_ct, tissues):
    """A reconstruction circle through the patient's right lung (padding outside it).

    The labels are those of the full field of view (a lung cut open by the field of view is
    connected to the outside air and cannot be segmented; the body finding says so); the rule
    under test is that lung voxels along the circle's edge make the lung incomplete.
    """
    volume = load_series(str(shared_ct / "lungdx-a0001-chest-5mm"))
    seg, coverage, _ = coverage_of(volume, tissues, shared_ct / "lungdx-a0001-chest-5mm")
    right = seg.labels == tissues[LUNG_RIGHT].label
    xs = np.flatnonzero(right.any(axis=(0, 1)))
    _nz, ny, nx = volume.shape
    radius = nx / 2 - (xs[0] + xs[-1]) / 2  # to the middle of the right lung's x extent
    yy, xx = np.mgrid[:ny, :nx]
    outside = (yy - ny / 2) ** 2 + (xx - nx / 2) ** 2 > radius**2
    hu = volume.hu.copy()
    hu[:, outside] = AIR_HU
    labels = seg.labels.copy()
    labels[:, outside] = 0
    cov, found = lung_coverage(hu, labels, volume.affine, tissues)
    assert not cov[LUNG_RIGHT]["complete"], cov
    assert cov[LUNG_RIGHT]["contact_cm2"]["field_of_view"] > 10
    assert any(f.code == "lung_truncated" and f.details["structure"] == LUNG_RIGHT
               for f in found)
    assert any(f.code == "body_truncated" for f in found)
    # without the circle the right lung is complete
    assert coverage[LUNG_RIGHT]["complete"]


def test_incomplete_lungs_marked_in_metrics_and_index(shared_ct, tissues, tmp_path):
    """metrics.json and index.csv say lung_complete false for the cropped series only."""
    full = load_series(str(shared_ct / "lungdx-a0001-chest-5mm"))
    seg = segment_series(str(shared_ct / "lungdx-a0001-chest-5mm"))
    lo, hi = lung_z_range(seg.labels, lung_ids(tissues))
    part = cropped(full, z=slice(0, (lo + hi) // 2), case_id="cropped-mid-lung")
    whole = cropped(full, case_id="full-range")
    options = CaseOptions(tissues=tissues, mesh_labels=[], mesh_formats=["ply"], preview=False)
    for v in (part, whole):
        write_volume_case(v, tmp_path, options)
    rows = {r["case_id"]: r for r in read_index(tmp_path)}
    assert rows["cropped-mid-lung"]["lung_complete"] == "False"
    assert rows["full-range"]["lung_complete"] == "True"
    case = read_case(tmp_path / "cropped-mid-lung", arrays=False)
    metrics = case.metrics
    assert metrics["lung_complete"] is False
    assert metrics["coverage"][LUNG_LEFT]["complete"] is False
    assert any(f.code == "lung_truncated" for f in case.findings)
    assert read_case(tmp_path / "full-range", arrays=False).metrics["lung_complete"] is True


def test_no_lungs_leaves_completeness_unknown(tissues):
    hu = np.full((8, 40, 40), 40, dtype=np.int16)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    metrics = measure(hu, labels, tissues, 0.001, lungs_found=False)
    coverage, findings = lung_coverage(hu, labels, np.eye(4), tissues)
    assert coverage == {} and findings == []
    assert add_coverage(metrics, coverage)["lung_complete"] is None


def test_air_clipped_to_padding_is_not_a_field_of_view_edge(shared_ct, tissues):
    """Scanners that store all air outside the body at the padding value: no false edge."""
    volume = load_series(str(shared_ct / "lungdx-a0001-chest-5mm"))
    seg, _coverage, _ = coverage_of(volume, tissues, shared_ct / "lungdx-a0001-chest-5mm")
    outside = ~(seg.labels > 0).any(axis=0)  # never body on any slice
    hu = volume.hu.copy()
    hu[:, outside] = AIR_HU
    _cov, found = lung_coverage(hu, seg.labels, volume.affine, tissues)
    for f in found:
        assert "field_of_view" not in f.details.get("contact_cm2", {}), f.message


@pytest.mark.parametrize("x, cut_side", [(slice(120, None), "right"), (slice(None, 392), "left")])
def test_lung_cut_open_by_the_image_edge_never_vanishes(sample_ct, tissues, tmp_path, x, cut_side):
    """The sample cropped in-plane so that one lung runs into the side edge of the image.

    A lung cut open by the edge joins the outside air. It must be kept (the part inside the
    image, voxel for voxel as in the full series' segmentation) and reported incomplete with a
    ``lung_truncated`` finding naming that edge, never dropped as "absent or not aerated".
    """
    full = load_series(str(sample_ct))
    seg_full = segment(full, tissues)
    _cov, found_full = lung_coverage(full.hu, seg_full.labels, full.affine, tissues)
    assert not [f for f in found_full if f.details.get("reason") == "field_of_view"]

    part = cropped(full, x=x, case_id=f"fov-{cut_side}")
    options = CaseOptions(tissues=tissues, mesh_labels=[], mesh_formats=["ply"], preview=False)
    write_volume_case(part, tmp_path, options)
    case = read_case(tmp_path / f"fov-{cut_side}", arrays=False)
    metrics = case.metrics
    cut_lung = LUNG_RIGHT if cut_side == "right" else LUNG_LEFT
    assert metrics["lung_complete"] is False
    assert metrics["coverage"][cut_lung]["complete"] is False
    truncated = [f for f in case.findings
                 if f.code == "lung_truncated" and f.details["structure"] == cut_lung]
    assert len(truncated) == 1, case.findings
    assert cut_side in truncated[0].details["contact_cm2"]
    for f in case.findings:
        assert "absent or not aerated" not in f.message, f
    # both lungs kept: inside the crop, each label agrees with the full series' segmentation
    seg_part = segment(part, tissues)
    for name in (LUNG_LEFT, LUNG_RIGHT):
        a = seg_part.labels == tissues[name].label
        b = seg_full.labels[:, :, x] == tissues[name].label
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice > 0.9, (name, dice)
    # the total really is partial: below the full sample's
    full_ml = float(np.count_nonzero(np.isin(seg_full.labels, lung_ids(tissues)))) * (
        full.voxel_volume_ml)
    assert metrics["lung_volume_ml"] < 0.95 * full_ml
    rows = {r["case_id"]: r for r in read_index(tmp_path)}
    assert rows[f"fov-{cut_side}"]["lung_complete"] == "False"


def test_lung_missing_while_the_body_is_cut_is_incomplete(sample_ct, tissues):
    """The coverage rule alone: a lung absent from the labels while the body is cut in-plane
    (what a segmentation that lost it gives) is incomplete with a field-of-view finding."""
    full = load_series(str(sample_ct))
    part = cropped(full, x=slice(120, None))
    labels = segment(part, tissues).labels.copy()
    labels[labels == tissues[LUNG_RIGHT].label] = 0
    coverage, found = lung_coverage(part.hu, labels, part.affine, tissues)
    assert coverage[LUNG_RIGHT]["complete"] is False
    lost = [f for f in found if f.details.get("reason") == "field_of_view"]
    assert [f.details["structure"] for f in lost] == [LUNG_RIGHT]
    assert "not found" in lost[0].message and "field of view" in lost[0].message
    assert add_coverage({"lung_volume_ml": 1.0}, coverage)["lung_complete"] is False
