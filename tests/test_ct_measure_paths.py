"""measure_case's shared-pass fast paths give the numbers of the plain per-label code, exactly.

Issue 15 made :func:`medscan.ct.measure.measure_case` compute one (label, HU) histogram, one
set of per-face label counts and one set of label boxes and share them between the blocks.
Each test compares that path with an independent one on real data (the embedded sample and a
shared chest series): :func:`medscan.ct.measure.measure` (gathers every label's voxels with
float64 sums), NumPy masks per lung for the coverage contacts, and the float-HU gather of
:func:`medscan.ct.structures.structure_stats`.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_ct_measure import _case  # the same cached (volume, labels) per series

from medscan.ct import measure as m
from medscan.ct.orient import canonical_reorientation
from medscan.ct.structures import MAX_ALL_LABEL_BINS, structure_stats
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, default_tissues
from medscan.volume import Volume


@pytest.fixture(scope="module", params=["sample", "lungdx-a0001-chest-5mm"])
def case(request, sample_ct):
    folder = sample_ct if request.param == "sample" else (
        request.getfixturevalue("shared_ct") / request.param)
    return _case(str(folder))


def test_base_metrics_equal_the_per_label_gather(case):
    volume, labels = case
    metrics, _ = m.measure_case(volume, labels, default_tissues())
    plain = m.measure(volume.hu, labels, default_tissues(), volume.voxel_volume_ml)
    for key, value in plain.items():
        if key != "lung_complete":
            assert metrics[key] == value, key
    assert metrics["perc15_hu"] is not None


def test_lung_contacts_equal_numpy_masks(case):
    volume, labels = case
    coverage, _ = m.lung_coverage(volume.hu, labels, volume.affine, default_tissues())
    reo = canonical_reorientation(volume.affine)
    lab = reo.to_canonical(labels)
    sx, sy, sz = np.linalg.norm(reo.canonical_affine(volume.affine, labels.shape)[:3, :3],
                                axis=0)
    face_cm2 = {0: sy * sx / 100.0, 1: sz * sx / 100.0, 2: sz * sy / 100.0}
    tissues = default_tissues()
    for name in (LUNG_LEFT, LUNG_RIGHT):
        mask = lab == tissues[name].label
        if not mask.any():
            assert name not in coverage
            continue
        for face, (axis, index) in m._FACES.items():
            n = int(np.count_nonzero(np.take(mask, index, axis=axis)))
            expected = round(float(n * face_cm2[axis]), 2) if n else None
            assert coverage[name]["contact_cm2"].get(face) == expected, (name, face)


def test_wide_hu_range_takes_the_per_label_path_with_the_same_numbers(case):
    """A HU range too wide for the all-label histogram: the same metrics, other code path."""
    volume, labels = case
    hu = volume.hu.copy()
    background = np.flatnonzero(labels.ravel() == 0)
    hu.flat[background[len(background) // 2]] = np.iinfo(hu.dtype).max
    hu.flat[background[len(background) // 3]] = np.iinfo(hu.dtype).min
    assert 256 * (int(hu.max()) - int(hu.min()) + 1) > MAX_ALL_LABEL_BINS
    wide = Volume(hu, volume.affine)
    a, _ = m.measure_case(volume, labels, default_tissues())
    b, _ = m.measure_case(wide, labels, default_tissues())
    assert a["tissues"] == b["tissues"]
    assert a["structures"] == b["structures"]
    assert a["density_bands"] == b["density_bands"]


def test_integer_histogram_stats_match_the_float_gather(case):
    volume, labels = case
    names = {t.label: t.name for t in default_tissues().all}
    exact = structure_stats(volume.hu, labels, volume.affine, names)
    gathered = structure_stats(volume.hu.astype(np.float32), labels, volume.affine, names)
    for name, entry in exact.items():
        for key in ("voxels", "min_hu", "max_hu", "median_hu", "centroid_lps_mm",
                    "bbox_lps_mm"):
            assert entry[key] == gathered[name][key], (name, key)
        if entry["voxels"]:
            for key in ("mean_hu", "std_hu", "p5_hu", "p95_hu"):
                assert entry[key] == pytest.approx(gathered[name][key], abs=2e-3), (name, key)
