"""measure_case's one-pass path gives the old per-block path's metrics.json, byte for byte.

Issue 15 (measurement speed): for integer HU on the CPU, :func:`medscan.ct.measure.measure_case`
now takes the label counts, boxes and mean indices from one ``cc3d.statistics`` pass and every
HU statistic, the lung metrics, the density bands and the regional analysis from one (row, HU)
histogram (``_one_pass``), instead of ``find_objects``, per-label masks, the gathered lung
voxels and their selections (``_per_block_passes``, still the path for float HU, accelerators
and very wide HU ranges). The old formulation is kept in the code and used here as the
reference: each helper against its old counterpart, and the whole ``metrics.json`` of both
paths compared as the bytes the job writes, on real series, on odd layouts built from them
(flipped, transposed, tilted, cut, lungs removed, one-voxel labels) and on random maps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ct_reference import load_series, reoriented
from test_ct_measure import _case  # the same cached (volume, labels) per series

from medscan.ct import measure as m
from medscan.ct.density import default_density_bands
from medscan.ct.regions import (
    lung_regions,
    lung_regions_from_histogram,
    lung_voxels,
    region_grid,
    region_index,
)
from medscan.ct.segment import segment
from medscan.ct.structures import (
    _geometry_from_moments,
    label_counts,
    label_geometry,
    label_hu_histogram,
    ndimage_boxes,
    row_hu_histogram,
)
from medscan.ct.tissues import default_tissues
from medscan.io.atomic import to_jsonable
from medscan.volume import Volume

LUNGS = (7, 8)


def _json(metrics: dict) -> str:
    """metrics.json as the job writes it (:func:`medscan.io.atomic.write_json`)."""
    return json.dumps(to_jsonable(metrics), indent=2, sort_keys=False)


def _both_paths(volume: Volume, labels: np.ndarray, tissues=None, monkeypatch=None
                ) -> tuple[str, str]:
    tissues = tissues if tissues is not None else default_tissues()
    calls = []
    one_pass = m._one_pass

    def spy(*args, **kwargs):
        calls.append(1)
        return one_pass(*args, **kwargs)

    monkeypatch.setattr(m, "_one_pass", spy)
    new, new_findings = m.measure_case(volume, labels, tissues)
    assert calls, "the one-pass path was not taken"
    monkeypatch.setattr(m, "_one_pass", m._per_block_passes)
    old, old_findings = m.measure_case(volume, labels, tissues)
    monkeypatch.setattr(m, "_one_pass", one_pass)
    assert [f.to_dict() for f in new_findings] == [f.to_dict() for f in old_findings]
    return _json(new), _json(old)


def _rotated(volume: Volume, degrees: float, axes: tuple[int, int] = (1, 2)) -> Volume:
    """The same array under an affine rotated about an LPS axis (oblique: S mixes indices)."""
    angle = np.deg2rad(degrees)
    rot = np.eye(4)
    a, b = axes
    rot[[a, a, b, b], [a, b, a, b]] = [np.cos(angle), -np.sin(angle), np.sin(angle),
                                       np.cos(angle)]
    return Volume(volume.hu, rot @ volume.affine, case_id="rotated")


def _odd_inputs(volume: Volume, labels: np.ndarray) -> dict[str, tuple[Volume, np.ndarray]]:
    """Layouts of one real case that take other branches of the one-pass code."""
    out: dict[str, tuple[Volume, np.ndarray]] = {"as_loaded": (volume, labels)}
    for name, (perm, flips) in {"flipped": ((0, 1, 2), (True, True, False)),
                                "transposed": ((0, 2, 1), (True, False, True)),
                                "sagittal_stack": ((2, 0, 1), (False, True, False))}.items():
        out[name] = (reoriented(volume, perm, flips),
                     reoriented(Volume(labels, volume.affine), perm, flips).hu)
    out["tilted"] = (_rotated(volume, 25.0), labels)
    out["tilted_about_s"] = (_rotated(volume, 33.0, (0, 1)), labels)
    nz, ny, nx = labels.shape
    cut = (slice(nz // 4, nz - nz // 5), slice(ny // 3, ny), slice(0, nx // 2 + 7))
    shift = np.eye(4)
    shift[:3, 3] = [cut[2].start, cut[1].start, cut[0].start]
    out["cut_through_lungs"] = (Volume(np.ascontiguousarray(volume.hu[cut]),
                                       volume.affine @ shift), np.ascontiguousarray(labels[cut]))
    no_lungs = np.where(np.isin(labels, LUNGS), 0, labels).astype(np.uint8)
    out["no_lungs"] = (volume, no_lungs)
    one_lung = np.where(labels == LUNGS[0], 0, labels).astype(np.uint8)
    out["one_lung"] = (volume, one_lung)
    tiny = np.where(np.isin(labels, LUNGS), 0, labels).astype(np.uint8)
    tiny[0, 0, 0] = LUNGS[0]  # a one-voxel lung in the corner, touching three faces
    tiny[-1, -1, -1] = LUNGS[1]
    tiny[nz // 2, ny // 2, nx // 2] = 200  # an id the table does not name
    tiny[nz // 2, 0, nx - 1] = 255
    out["one_voxel_lungs_and_unnamed_ids"] = (volume, tiny)
    out["background_only"] = (volume, np.zeros_like(labels))
    return out


@pytest.fixture(scope="module", params=["sample", "lungdx-a0001-chest-5mm"])
def case(request, sample_ct):
    folder = sample_ct if request.param == "sample" else (
        request.getfixturevalue("shared_ct") / request.param)
    return _case(str(folder))


def test_metrics_json_identical_to_the_per_block_path(case, monkeypatch):
    volume, labels = case
    odd = _odd_inputs(volume, labels)
    if volume.hu.shape[0] > 40:  # the larger shared series: the main branches only (time)
        odd = {k: odd[k] for k in ("as_loaded", "tilted", "one_voxel_lungs_and_unnamed_ids")}
    for name, (vol, lab) in odd.items():
        new, old = _both_paths(vol, lab, monkeypatch=monkeypatch)
        assert new == old, name


def test_metrics_json_identical_with_a_foreign_label_table(case, monkeypatch):
    """Any label table (no lung names, a lung name on another id) takes the same numbers."""
    volume, labels = case
    for table in ({5: "bone", 3: "fat"}, {4: "lung_right", 5: "bone"},
                  {7: "lung_left", 8: "lung_right", 1: "airways"}):
        new, old = _both_paths(volume, labels, table, monkeypatch)
        assert new == old, table


@pytest.mark.slow
def test_metrics_json_identical_on_ricord(shared_ct, monkeypatch):
    """The 255-slice RICORD series (67 M voxels), where the speed matters."""
    volume, labels = _case(str(shared_ct / "ricord-1a-000082-jpegll"))
    new, old = _both_paths(volume, labels, monkeypatch=monkeypatch)
    assert new == old


def test_metrics_json_identical_on_the_gantry_tilted_series(shared_ct_qa, monkeypatch):
    """A sheared affine (gantry tilt), uneven slices, no lungs; its soft tissue as a lung."""
    volume = load_series(str(shared_ct_qa / "ge-head-tilt-uneven"))
    labels = segment(volume, default_tissues()).labels
    for table in (default_tissues(), {4: "lung_right", 5: "bone", 3: "lung_left"}):
        new, old = _both_paths(volume, labels, table, monkeypatch)
        assert new == old


def _random_map(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Blobs of a few ids (some touching the volume's edges), a one-voxel id, an id at 255."""
    labels = np.zeros(shape, np.uint8)
    for label in rng.choice(np.arange(1, 255), size=4, replace=False):
        lo = [int(rng.integers(0, n)) for n in shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape, strict=True)]
        block = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        block[rng.random(block.shape) < 0.6] = label
    labels[tuple(int(rng.integers(0, n)) for n in shape)] = 255
    labels[-1, 0, -1] = 17
    return labels


def test_label_geometry_equals_counts_boxes_and_index_moments(case):
    _volume, labels = case
    rng = np.random.default_rng(15)
    maps = [labels, np.zeros((4, 8, 8), np.uint8), labels[:, ::2, ::3]]
    maps += [_random_map(rng, (int(rng.integers(2, 9)), int(rng.integers(12, 40)),
                               int(rng.integers(12, 40)))) for _ in range(20)]
    one = np.zeros((3, 10, 10), np.uint8)
    one[2, 9, 9] = 1  # a single voxel in the last corner
    maps.append(one)
    for lab in maps:
        counts, boxes, centres = label_geometry(lab)
        ref_counts = label_counts(lab)
        assert np.array_equal(counts, ref_counts)
        assert boxes == ndimage_boxes(lab)
        _c, ref_boxes, ref_centres = _geometry_from_moments(lab, 4, None, None)
        assert boxes == ref_boxes
        assert centres.keys() == ref_centres.keys()
        for label, centre in centres.items():  # bit for bit, not approximately
            assert [c.hex() for c in centre] == [c.hex() for c in ref_centres[label]], label


def test_label_geometry_refuses_what_cc3d_cannot_count():
    with pytest.raises(ValueError, match="256"):
        label_geometry(np.full((2, 3, 4), 100, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        label_geometry(np.zeros((8, 8, 8), np.int16))


def _row_reference(hu, labels, label_rows, n_rows, lo, width, splits):
    """Every voxel's row from full-size arrays (NumPy masks), one bincount."""
    rows = label_rows[labels].copy()
    for label, box, grid in splits:
        sub = rows[box]
        full = np.broadcast_to(grid, sub.shape)
        sub[labels[box] == label] += full[labels[box] == label]
    index = rows.astype(np.int64) * width + hu.astype(np.int64) - lo
    return np.bincount(index.ravel(), minlength=n_rows * width).reshape(n_rows, width)


def test_row_histogram_equals_the_label_histogram_and_numpy_masks(case):
    volume, labels = case
    hu = volume.hu
    lo, hi = int(hu.min()), int(hu.max())
    _values, per_label = label_hu_histogram(hu, labels)
    counts, boxes, _ = label_geometry(labels)
    present = np.flatnonzero(counts[1:]) + 1
    label_rows = np.zeros(256, np.int64)
    label_rows[present] = np.arange(1, present.size + 1)
    whole = tuple(slice(0, n) for n in labels.shape)
    rows = row_hu_histogram(hu, labels, label_rows, present.size + 1, lo, hi - lo + 1, whole)
    assert np.array_equal(rows[1:], per_label[present])
    # lungs split by a region grid, slab edges not on box edges
    rng = np.random.default_rng(3)
    splits, n_rows = [], present.size + 1
    for label in LUNGS:
        box = boxes[label - 1]
        if box is None:
            continue
        shape = tuple(b.stop - b.start for b in box)
        grid = rng.integers(0, 6, (shape[0], shape[1], 1))
        label_rows[label] = n_rows
        n_rows += 6
        splits.append((label, box, grid))
    union = tuple(slice(min(boxes[i - 1][a].start for i in present),
                        max(boxes[i - 1][a].stop for i in present)) for a in range(3))
    got = row_hu_histogram(hu, labels, label_rows, n_rows, lo, hi - lo + 1, union,
                           tuple(splits), slab=3)
    ref = _row_reference(hu, labels, label_rows, n_rows, lo, hi - lo + 1, splits)
    assert np.array_equal(got[1:], ref[1:])  # row 0 (background): only inside the box


def test_region_grid_equals_region_index_of_the_gathered_voxels(case):
    volume, labels = case
    for name, (vol, lab) in _odd_inputs(volume, labels).items():
        counts, boxes, _ = label_geometry(lab)
        for label in LUNGS:
            if not counts[label]:
                continue
            box = boxes[label - 1]
            grid, bounds = region_grid(lab, vol.affine, label, box)
            vox = lung_voxels(vol.hu, lab, vol.affine, label, box=box)
            third, half, ref_bounds = region_index(vox)
            mask = lab[box] == label
            assert np.array_equal(np.broadcast_to(grid, mask.shape)[mask],
                                  third.astype(np.int64) * 2 + half), (name, label)
            assert json.dumps(bounds) == json.dumps(ref_bounds), (name, label)


def test_regions_from_histogram_equal_the_gathered_regions_on_random_lungs():
    """Random HU on the band edges and around -950 HU, random lung shapes and affines."""
    rng = np.random.default_rng(14)
    bands = default_density_bands()
    edges = np.array([*bands.edges, -950, -951, -949], np.int64)
    for _ in range(12):
        shape = (int(rng.integers(2, 12)), int(rng.integers(6, 30)), int(rng.integers(6, 30)))
        labels = _random_map(rng, shape)
        ids = [i for i in np.unique(labels) if i][:2]
        if len(ids) < 2:
            continue
        hu = rng.choice(np.concatenate([edges, rng.integers(-1100, 3100, 50)]),
                        size=shape).astype(np.int16)
        affine = np.diag([*rng.uniform(0.3, 3.0, 3), 1.0])
        affine[:3, 3] = rng.uniform(-200, 200, 3)
        if rng.random() < 0.5:  # oblique
            affine[:3, :3] = _rotated(Volume(hu, affine), rng.uniform(-40, 40)).affine[:3, :3]
        boxes = ndimage_boxes(labels)
        lungs = {"lung_right": int(ids[0]), "lung_left": int(ids[1])}
        lo, hi = int(hu.min()), int(hu.max())
        values = np.arange(lo, hi + 1, dtype=np.int64)
        hists, gathered = {}, {}
        for name, label in lungs.items():
            box = boxes[label - 1]
            grid, bounds = region_grid(labels, affine, label, box)
            label_rows = np.zeros(256, np.int64)
            label_rows[label] = 1  # row 0: every other voxel of the box
            h = row_hu_histogram(hu, labels, label_rows, 7, lo, values.size, box,
                                 ((label, box, grid),))
            hists[name] = (h[1:], bounds)
            gathered[name] = lung_voxels(hu, labels, affine, label, box=box)
        new = lung_regions_from_histogram(hists, values, bands, 0.7)
        old = lung_regions(gathered, bands, 0.7)
        assert json.dumps(new) == json.dumps(old)


def test_percentile_stand_in_gives_numpy_percentile_of_the_data(case):
    """The clamped stand-in's percentile is NumPy's on the data itself, bit for bit."""
    volume, labels = case
    rng = np.random.default_rng(150)
    samples = [volume.hu[np.isin(labels, LUNGS)], np.array([-5], np.int16),
               np.array([3, -2], np.int16), np.full(5000, -870, np.int16)]
    samples += [rng.integers(-1024, int(rng.integers(-1000, 3000)), int(n)).astype(np.int16)
                for n in rng.integers(1, 60_000, 8)]
    samples.append(np.concatenate([np.full(3000, -1000), np.full(1, 7), np.full(3000, 40)]))
    for data in samples:
        values, hist = np.unique(data, return_counts=True)
        for q in (0.0, 5.0, 15.0, 50.0, 95.0, 99.99, 100.0):
            stand_in = m.percentile_stand_in(values.astype(np.float32), hist, q)
            expected = np.percentile(data.astype(np.float32), q)
            got = np.percentile(stand_in, q, overwrite_input=True)
            assert stand_in.size == data.size and stand_in.dtype == np.float32
            assert np.asarray(got).tobytes() == np.asarray(expected).tobytes(), (data.size, q)
    assert m.percentile_stand_in(np.zeros(0, np.float32), np.zeros(0, np.int64), 15.0).size == 0
