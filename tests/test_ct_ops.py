"""The faster mask operations of issue 15 against their old formulations
(``tests/segment_reference_ops.py``): same voxels on real CT masks, random and adversarial
masks; and ``segment()`` run with the old operations gives byte-identical labels."""

from __future__ import annotations

import numpy as np
import pytest
import segment_reference_ops as ref

import medscan.ct.segment as segment_module
from medscan.backend import get_backend
from medscan.ct import ops
from medscan.ct.analyse import CaseOptions
from medscan.dicom import load_path
from medscan.volume import Volume

BE = get_backend("cpu")


def _real_masks(hu: np.ndarray) -> list[np.ndarray]:
    """Body, air and dense masks of a real series, whole and cropped (hole at the box edge)."""
    masks = [hu > -500, hu < -320, hu > 200, (hu > -500)[:, 100:300, 50:260], hu[:1] > -500]
    return [np.ascontiguousarray(m) for m in masks]


def _random_masks(seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 24, 3))
        masks.append(rng.random(shape) < rng.choice([0.05, 0.3, 0.5, 0.7, 0.95]))
    masks += [np.zeros((4, 5, 6), bool), np.ones((1, 1, 1), bool), np.ones((3, 4, 5), bool)]
    return masks


def _adversarial_largest() -> list[np.ndarray]:
    """Cases for the sampled candidate of ``largest_component``."""
    out = []
    # the majority component lies where the 1-in-64 sample never looks (odd rows/slices)
    m = np.zeros((9, 20, 20), bool)
    m[1, 1:19, 1:19] = True
    m[4, 0, 0] = True  # a sampled one-voxel component
    out.append(m)
    # two equal components: the tie goes to the first in raster order
    m = np.zeros((4, 8, 8), bool)
    m[0, :2, :] = True
    m[3, 6:, :] = True
    out.append(m)
    # no majority: three components of 40 / 35 / 25 %
    m = np.zeros((1, 10, 100), bool)
    m[0, 0, :40] = True
    m[0, 2, :35] = True
    m[0, 4, :25] = True
    out.append(m)
    # a tie of exactly half each, the sample seeing only the second: the first must win
    m = np.zeros((5, 8, 8), bool)
    m[1, :2, :] = True
    m[4, :2, :] = True
    out.append(m)
    return out


@pytest.fixture(scope="module")
def sample_hu(sample_ct) -> np.ndarray:
    return load_path(sample_ct).hu


def _adversarial_slabs() -> list[np.ndarray]:
    """Cases for the slab-wise labelling: components joined only across seams."""
    out = []
    # a U: two columns in separate slabs' worth of slices, joined only at the bottom slice
    m = np.zeros((9, 6, 6), bool)
    m[:, 1, 1] = True
    m[:, 1, 4] = True
    m[8, 1, 1:5] = True
    m[0:3, 4, 0:6] = True  # a bigger plate that loses to the U only when the U is joined
    out.append(m)
    # a zig-zag through every seam, next to a straight column that is one voxel longer
    m = np.zeros((8, 5, 8), bool)
    for k in range(8):
        m[k, 0, k // 2 : k // 2 + 2] = True
    m[:, 4, 0] = True
    m[0, 3, 0] = True
    out.append(m)
    # neighbours across a seam only diagonally (joined at 18/26, separate at 6), and a tie
    m = np.zeros((4, 4, 4), bool)
    m[1, 1, 1] = m[2, 2, 1] = m[1, 3, 3] = m[2, 2, 2] = True
    out.append(m)
    m = np.zeros((4, 4, 4), bool)
    m[1, 0, 0] = m[2, 1, 1] = True  # corner neighbours (26 only)
    m[0, 3, 3] = m[3, 3, 3] = True
    out.append(m)
    return out


def test_largest_component_equals_counting_every_component(sample_hu):
    """The sampled-candidate and slab-wise paths against counting every component of the
    whole mask: real masks, random masks, majority/tie cases, and components joined only
    across slab seams (slabs of 1, 2, 3 and 16 slices; 6-, 18- and 26-connectivity)."""
    masks = _real_masks(sample_hu) + _random_masks() + _adversarial_largest()
    masks += _adversarial_slabs()
    for m in masks:
        for conn in (6, 18, 26):
            expected = ref.largest_component(BE, m, conn)
            for slab in (1, 2, 3, 16):
                np.testing.assert_array_equal(
                    ops.largest_component(BE, m, conn, slab=slab), expected
                )
            work = m.copy()
            got = ops.largest_component(BE, work, conn, slab=2, overwrite=True)
            np.testing.assert_array_equal(got, expected)
            assert got is work or m.shape[0] <= 2


def test_select_labels_every_branch_equals_lookup_table():
    """Kept ids written by comparisons (few kept / few dropped) or a table: all the same."""
    rng = np.random.default_rng(23)
    for n in (1, 2, 3, 4, 7, 40, 300):
        ids = rng.integers(0, n + 1, (3, 5, 7)).astype(np.uint8 if n < 256 else np.uint16)
        for _ in range(12):
            keep = rng.random(n) < rng.choice([0.0, 0.05, 0.5, 0.95, 1.0])
            expected = np.concatenate([[False], keep])[ids]
            out = np.empty(ids.shape, bool)
            assert ops.select_labels(BE, ids, keep, out) is out
            np.testing.assert_array_equal(out, expected)
            np.testing.assert_array_equal(ops.select_labels(BE, ids.astype(np.uint32), keep),
                                          expected)


def test_edge_air_skip_equals_hull_on_every_slice(sample_hu):
    """Edge air with the hull skipped where no cut line can hold hull air, against the hull
    on every slice: the real body cut by a narrowed field of view on each side and on
    several at once, and random bodies touching random edges."""
    from types import SimpleNamespace

    p = SimpleNamespace(lung_threshold_hu=-320.0)
    rng = np.random.default_rng(31)
    cases = []
    hu = sample_hu[:, ::2, ::2]
    # a field of view cutting the body: the crop is the whole image, cut on every side, or
    # (a larger image) on some sides only
    for ys, xs in ((slice(100, 160), slice(0, 256)), (slice(0, 256), slice(70, 180)),
                   (slice(90, 170), slice(60, 200)), (slice(120, 256), slice(0, 110))):
        h = np.ascontiguousarray(hu[:, ys, xs])
        body = ops.fill_holes_2d(BE, h > -500)
        nz, ny, nx = h.shape
        box = (slice(0, nz), slice(0, ny), slice(0, nx))
        for extra_y, extra_x in ((0, 0), (1, 0), (0, 1)):
            cases.append((body, h, box, (nz, ny + extra_y, nx + extra_x)))
            cases.append((body[:, ::-1], h[:, ::-1], box, (nz, ny + extra_y, nx + extra_x)))
    for _ in range(40):
        h = rng.integers(-1000, 200, (3, 14, 16)).astype(np.int16)
        body = rng.random(h.shape) < rng.choice([0.1, 0.5])
        body[:, : int(rng.integers(0, 8))] = False  # often away from the first rows
        y0, x0, y1, x1 = (int(v) for v in rng.integers(0, 2, 4))
        box = (slice(0, 3), slice(y0, 14), slice(x0, 16))
        cases.append((body, h, box, (3, 14 + y1, 16 + x1)))
    for body, h, box, shape in cases:
        np.testing.assert_array_equal(
            segment_module._with_edge_air(BE, body, h, box, shape, p),
            ref.with_edge_air(BE, body, h, box, shape, p),
        )


def test_dilate_erode_equal_scipy_filters(sample_hu):
    """Box dilation / erosion by shifted boolean operations against SciPy's maximum / minimum
    filters (the old formulation): real masks, random shapes with windows larger than the
    array, one-voxel axes, empty and full masks, non-contiguous views."""
    rng = np.random.default_rng(5)
    cases = [(m, s) for m in _real_masks(sample_hu)[:2] for s in ((1, 3, 3), (3, 7, 9))]
    for m in _random_masks(7):
        size = tuple(int(2 * k + 1) for k in rng.integers(0, 8, 3))
        cases.append((m, size))
        cases.append((m[:, ::2, ::-1], size))
    for m, size in cases:
        np.testing.assert_array_equal(ops.dilate(BE, m, size), ref.dilate(BE, m, size))
        np.testing.assert_array_equal(ops.erode(BE, m, size), ref.erode(BE, m, size))
    with pytest.raises(ValueError, match="odd"):
        ops.dilate(BE, np.ones((2, 2, 2), bool), (1, 2, 1))


def test_fill_holes_2d_stacked_equals_slice_by_slice(sample_hu):
    """Slabs of slices labelled as one stacked image against one labelling per slice: real
    masks (lungs and body, a crop whose holes reach the box edge), random masks of one row,
    one column or one slice, slab sizes that leave a partial last slab, and a hole on the
    last row of one slice right above a hole on the first row of the next."""
    cases = _real_masks(sample_hu) + _random_masks(11)
    m = np.ones((3, 6, 6), bool)
    m[0, 4, 2] = False  # hole just above the stacking seam
    m[1, 1, 2] = False  # hole just below it
    m[2, 5, 3] = False  # background on the last row: outside
    cases.append(m)
    for m in cases:
        expected = ref.fill_holes_2d(BE, m)
        for slab in (1, 2, 32):
            np.testing.assert_array_equal(ops.fill_holes_2d(BE, m, slab=slab), expected)
    filled = ops.fill_holes_2d(BE, cases[-1])
    assert filled[:2].all() and not filled[2, 5, 3]


def test_fill_holes_3d_equals_lookup_table(sample_hu):
    """3-D fill with the outside ids selected by comparisons against the look-up table:
    real masks (holes reaching the box edge in the crop), random masks, a closed cavity, a
    tube open at both ends, and masks with many separate outside regions (table branch)."""
    cases = _real_masks(sample_hu) + _random_masks(29)
    closed = np.zeros((5, 7, 7), bool)
    closed[1:4, 1:6, 1:6] = True
    closed[2, 3, 3] = False
    tube = np.zeros((5, 7, 7), bool)
    tube[:, 1:6, 1:6] = True
    tube[:, 3, 3] = False
    walls = np.zeros((4, 9, 9), bool)
    walls[:, :, 1::2] = True  # five separate outside slabs
    spiral = np.ones((9, 7, 7), bool)  # a cavity reaching the top face only through a
    spiral[1:8, 3, 3] = False  # channel that winds across several slab seams
    spiral[7, 3, 3:6] = False
    spiral[0:8, 3, 5] = False
    spiral[0, 3, 5] = False
    sealed = spiral.copy()
    sealed[0, 3, 5] = True  # the same channel closed at the top: a cavity
    cases += [closed, tube, walls, spiral, sealed]
    for m in cases:
        expected = ref.fill_holes_3d(BE, m)
        for slab in (1, 2, 3, 32):
            np.testing.assert_array_equal(ops.fill_holes_3d(BE, m, slab=slab), expected)
    assert ops.fill_holes_3d(BE, closed)[2, 3, 3] and not ops.fill_holes_3d(BE, tube)[2, 3, 3]
    assert not ops.fill_holes_3d(BE, spiral, slab=2)[4, 3, 3]
    assert ops.fill_holes_3d(BE, sealed, slab=2)[4, 3, 3]


def test_centroid_equals_count_nonzero_per_axis(sample_hu):
    """The (z, y, x) mean index from one z pass and one plane sum, against three
    ``count_nonzero`` projections: bit-identical floats (the counts are the same integers)."""
    masks = _real_masks(sample_hu) + _random_masks(13) + [sample_hu[:, ::3, ::-2] > -500]
    for m in masks:
        np.testing.assert_array_equal(segment_module._centroid(BE, m), ref.centroid(BE, m))


def test_convex_hull_2d_degenerate_and_sparse_equal_scikit_image():
    """Hull vertices from the row extremes only (issue 15) on the shapes where that could
    matter: one to three pixels, single rows, columns and diagonals, collinear sparse points
    (``test_ct_segment.py`` covers real CT slices and dense random masks)."""
    import warnings

    from skimage.morphology import convex_hull_image

    rng = np.random.default_rng(17)
    masks = [np.eye(9, dtype=bool), np.eye(9, dtype=bool)[::-1], np.ones((1, 7), bool),
             np.ones((6, 1), bool), np.zeros((3, 3), bool)]
    for _ in range(300):
        m = np.zeros(tuple(int(n) for n in rng.integers(1, 25, 2)), bool)
        for _ in range(int(rng.integers(1, 5))):
            m[rng.integers(0, m.shape[0]), rng.integers(0, m.shape[1])] = True
        masks.append(m)
    for _ in range(100):  # points on one random line
        m = np.zeros((30, 30), bool)
        step = rng.integers(0, 4, 2)
        start = rng.integers(0, 5, 2)
        for k in range(int(rng.integers(2, 6))):
            m[tuple(np.minimum(start + k * step, 29))] = True
        masks.append(m)
    for m in masks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-image warns on an empty mask
            expected = convex_hull_image(m)
        np.testing.assert_array_equal(ops.convex_hull_2d(m), expected)


def test_refine_mask_in_place_equals_fresh_output(sample_hu):
    """``refine_mask(..., overwrite=True)`` (result written into the condition) against the
    original formulation (a fresh output): real body and lung masks, random masks, factors
    with z blocks and odd in-plane blocks, conditions larger than ``low * factors`` (the
    remainder must come out empty) and smaller (partial last blocks)."""
    rng = np.random.default_rng(19)
    cases = []
    hu = sample_hu[:12]
    for thr in (-500, -320):
        for factors in ((1, 2, 2), (2, 2, 2), (3, 1, 2)):
            low = ops.block_mean(BE, hu, factors) > thr
            cases.append((low, factors, hu > thr))
    for _ in range(40):
        factors = tuple(int(f) for f in rng.integers(1, 4, 3))
        low = rng.random(tuple(int(n) for n in rng.integers(1, 9, 3))) < 0.6
        full = tuple(n * f + int(rng.integers(-f + 1, 3))
                     for n, f in zip(low.shape, factors, strict=True))
        cases.append((low, factors, rng.random(full) < 0.5))
    for low, factors, cond in cases:
        expected = ops.refine_mask(BE, low, factors, cond)
        work = cond.copy()
        got = ops.refine_mask(BE, low, factors, work, overwrite=True)
        np.testing.assert_array_equal(got, expected)
        assert got is work or factors == (1, 1, 1)


def _segment_both(volume: Volume, monkeypatch: pytest.MonkeyPatch):
    opts = CaseOptions.defaults()
    new = segment_module.segment(volume, opts.tissues, opts.segment)
    with monkeypatch.context() as mp:
        for name, fn in ref.old_ops().items():
            mp.setattr(segment_module, name, fn, raising=False)
            mp.setattr(ops, name, fn, raising=False)
        old = segment_module.segment(volume, opts.tissues, opts.segment)
    return new, old


def _odd_volumes(volume: Volume) -> dict[str, Volume]:
    """One-slice, three-slice, a cropped field of view (lungs cut at the image edge), odd
    sizes that leave partial blocks, float HU, and a slice axis running the other way."""
    hu, aff = volume.hu, volume.affine
    mid = hu.shape[0] // 2
    flipped = aff.copy()
    flipped[:3, 2] *= -1
    out = {
        "one_slice": hu[mid : mid + 1],
        "three_slices": hu[mid : mid + 3],
        "cropped_fov": hu[:, 100:400, 60:300],
        "odd_sizes": hu[1:, 3:-2, 1:-4],
        "float": hu.astype(np.float32) + 0.25,
    }
    rods = hu.copy()  # spinal-rod-like metal (8000 HU) inside the body: the metal finding
    y0, x0 = hu.shape[1] // 2, hu.shape[2] // 2
    rods[:, y0 + 40 : y0 + 44, x0 - 30 : x0 - 26] = 8000
    rods[:, y0 + 40 : y0 + 44, x0 + 26 : x0 + 30] = 8000
    out["metal_rods"] = rods
    vols = {k: Volume(hu=np.ascontiguousarray(v), affine=aff, case_id="t") for k, v in out.items()}
    vols["z_flipped"] = Volume(hu=np.ascontiguousarray(hu[::-1]), affine=flipped, case_id="t")
    return vols


#: sha256 of ``segment().labels`` at main cdb6d7c, before the issue-15 speed-ups (a change
#: that is *meant* to change the segmentation updates these; a speed-up never does).
MAIN_LABEL_SHA256 = {
    "sample": "76dbe81e46eb013f05ba7ecd694c8c4149c341e738642ef17f0627bc28b3cd65",
    "sample/one_slice": "35845ecbc4f0c266ae6a2572ff5705954eed57fc1a021e850852383620408914",
    "sample/three_slices": "e0376cf8038e9ce0eb585a8161e929bbe36c32ef8a475d938425b9a556f1a4e5",
    "sample/cropped_fov": "f8f1f04f8e60f84e6c44c5a5b05c146c4a1d58b435e2a98e26faa1953f2f238f",
    "sample/odd_sizes": "41d3ea3e3cdeb73539582b25d52d9c0aec54aa3cca8fa59cdc7d33cd609d6fb8",
    "sample/float": "8b650ed435c14c77230a95b8323b08a7b2c635b4204fa17751f6709fe5579664",
    "sample/z_flipped": "2796de51d30064373162a4f7c3c4e9710819e599daf6e24ea74a4c30f4b4647f",
    "ct/ricord-1a-000082-jpegll":
        "b355eda8b64b11eba9a001f25b57b5401bff169a1fe37bb284df98501226a5e4",
    "ct/lungdx-a0001-chest-5mm":
        "b3e2cbe5ec43684fc5dcc480b6a15779161b4befed526a2e014493e95e76705b",
    "ct/lungdx-a0002-b40f": "76dbe81e46eb013f05ba7ecd694c8c4149c341e738642ef17f0627bc28b3cd65",
    "ct/lungdx-a0002-b70f": "0e3f09f1bfce46a367cfce7755b814654aa26d9737426b573817e21631971f44",
    "ct-qa/ge-head-tilt-uneven":
        "88587dc8e003d6caae856721c441f845a061dbccd1a1f9cc93275eb37a50b0c1",
}


def _sha256(labels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()


def test_segment_labels_equal_main_on_sample_and_variants(sample_ct):
    """Labels of the sample and its odd variants equal main's before the speed-ups (saved
    hashes; this also covers the steps changed inline in ``segment``, e.g. the tissue
    look-up by ``take``, which the old-operations comparison below does not revert)."""
    volume = load_path(sample_ct)
    opts = CaseOptions.defaults()
    for name, vol in {"sample": volume, **_odd_volumes(volume)}.items():
        key = name if name == "sample" else f"sample/{name}"
        if key not in MAIN_LABEL_SHA256:
            continue  # built after main's hashes were taken (metal rods)
        labels = segment_module.segment(vol, opts.tissues, opts.segment).labels
        assert _sha256(labels) == MAIN_LABEL_SHA256[key], key


@pytest.mark.slow
@pytest.mark.parametrize("key", [k for k in MAIN_LABEL_SHA256 if not k.startswith("sample")])
def test_segment_labels_equal_main_on_shared_series(shared_ct, key):
    from ct_reference import load_series

    folder = shared_ct.parent / key
    if not folder.exists():
        pytest.skip(f"needs {folder}")
    opts = CaseOptions.defaults()
    labels = segment_module.segment(load_series(str(folder)), opts.tissues, opts.segment).labels
    assert _sha256(labels) == MAIN_LABEL_SHA256[key], key


def _assert_same(new, old) -> None:
    assert new.labels.dtype == old.labels.dtype == np.uint8
    np.testing.assert_array_equal(new.labels, old.labels)
    assert [(f.code, f.message) for f in new.findings] == [
        (f.code, f.message) for f in old.findings
    ]


def test_segment_labels_identical_to_old_ops_on_sample(sample_ct, monkeypatch):
    volume = load_path(sample_ct)
    codes = set()
    for name, vol in {"sample": volume, **_odd_volumes(volume)}.items():
        new, old = _segment_both(vol, monkeypatch)
        assert new.lungs_found == old.lungs_found, name
        _assert_same(new, old)
        codes |= {f.code for f in new.findings}
    # the variants reach the paths they are there for
    assert {"metal", "reoriented", "no_lungs", "airways"} <= codes


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["ricord-1a-000082-jpegll", "lungdx-a0001-chest-5mm"])
def test_segment_labels_identical_to_old_ops_on_shared_series(shared_ct, folder, monkeypatch):
    from ct_reference import load_series

    volume = load_series(str(shared_ct / folder))
    new, old = _segment_both(volume, monkeypatch)
    assert new.lungs_found and old.lungs_found
    _assert_same(new, old)
