"""The medscan napari plugin on a real case: `medscan segment` run on the embedded sample CT.

Tests marked ``napari`` open a real viewer window (pytest-xvfb provides the X display; a hidden
window renders black, so ``show=True``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from medscan.napari import _reader
from medscan.napari.geometry import lps_affine_from_layer, parse_color
from medscan.volume import Volume

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def segment_out(tmp_path_factory) -> Path:
    """Output folder of the REAL `medscan segment` on the embedded sample (run once)."""
    work = tmp_path_factory.mktemp("napari-segment")
    out = work / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "medscan.cli", "segment", f"output={out}"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def case_dir(segment_out) -> Path:
    cases = [c for c in segment_out.iterdir() if (c / "manifest.json").is_file()]
    assert len(cases) == 1, cases
    return cases[0]


def _layers(paths):
    """Build real napari layer objects (no viewer) from the reader's tuples."""
    from napari.layers import Layer

    reader = _reader.get_reader(paths)
    assert reader is not None
    return [Layer.create(*t) for t in reader(paths)]


def test_npe2_validate_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "medscan", "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_manifest_declares_reader_and_widgets():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("medscan")
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"CT segmentation", "X-ray review", "CT window"} <= widgets
    assert manifest.contributions.readers[0].accepts_directories
    assert [s.key for s in manifest.contributions.sample_data] == ["chest_ct"]


def test_sample_data_is_the_embedded_ct(sample_ct):
    from medscan.napari._sample_data import sample_ct as open_sample
    from medscan.napari._sample_data import sample_ct_path

    assert sample_ct_path().resolve() == sample_ct.resolve()
    (data, kwargs, kind) = open_sample()[0]
    assert kind == "image" and data.shape == (30, 512, 512)
    assert kwargs["scale"] == pytest.approx((8.0, 0.6464844, 0.6464844), rel=1e-5)


def test_reader_declines_foreign_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert _reader.get_reader(str(tmp_path / "notes.txt")) is None
    assert _reader.get_reader(str(tmp_path)) is None


def test_case_folder_layers(case_dir):
    manifest = json.loads((case_dir / "manifest.json").read_text())
    metrics = json.loads((case_dir / "metrics.json").read_text())
    layers = _layers(str(case_dir))
    case_id = manifest["case_id"]
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds[:2] == ["Image", "Labels"]
    assert set(kinds[2:]) == {"Surface"}
    image, labels, surfaces = layers[0], layers[1], layers[2:]
    assert image.name == f"{case_id} CT"
    assert labels.name == f"{case_id} labels"
    tissues = {m["tissue"] for m in manifest["meshes"]}
    assert tissues  # the sample has lungs and bone meshes
    assert {s.name for s in surfaces} == {f"{case_id} {t} mesh" for t in tissues}

    # Scale = voxel size in mm from the NIfTI affine, identical for image and labels.
    nifti = Volume.from_nifti(case_dir / "volume.nii.gz")
    np.testing.assert_allclose(image.scale, nifti.spacing, rtol=1e-6)
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert image.units == labels.units == surfaces[0].units

    # Tissue names and colours from the manifest.
    names = dict(zip(labels.features["index"], labels.features["name"], strict=True))
    for key, entry in manifest["labels"].items():
        assert names[int(key)] == entry["name"]
        rgba = labels.colormap.map(np.array([int(key)]))[0]
        np.testing.assert_allclose(rgba, parse_color(entry["color"]), atol=1 / 255 + 1e-6)
    # Metrics travel with the layers.
    assert image.metadata["medscan"]["metrics"] == metrics
    # Every per-label number is a feature column (structures' more precise copy first).
    seen = set()
    for block in ("structures", "tissues"):
        for name, numbers in (metrics.get(block) or {}).items():
            row = labels.features[labels.features["name"] == name]
            for key, value in numbers.items():
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if number and key != "label" and (name, key) not in seen:
                    seen.add((name, key))
                    assert float(row[key].iloc[0]) == pytest.approx(value), (block, name, key)
    assert {"p95_hu", "surface_area_mm2", "volume_ml"} <= set(labels.features.columns)


def test_mesh_vertices_land_on_their_label_voxels(case_dir):
    """Mesh vertices, mapped by napari's world->data of the Labels layer, sit on their tissue.

    A marching-cubes vertex lies between a voxel of its tissue and one outside it. The job's
    meshes are smoothed on a 1.5 mm occupancy grid, so a vertex may sit a fraction of a voxel
    beyond the voxel faces: almost all are within one voxel of a voxel centre of their tissue,
    and all within 1.5 voxels. The same vertices read as RAS instead of LPS miss.
    """
    layers = _layers(str(case_dir))
    labels = next(layer for layer in layers if type(layer).__name__ == "Labels")
    features = labels.features
    ids = {name: int(i) for i, name in zip(features["index"], features["name"], strict=True)}
    data = np.asarray(labels.data)
    shape = np.array(data.shape)
    surfaces = [layer for layer in layers if type(layer).__name__ == "Surface"]
    assert surfaces

    def within(points_world, label, tol):
        """Share of points with a voxel of ``label`` at most ``tol`` voxels away on every axis."""
        idx = np.array([labels.world_to_data(p) for p in points_world])
        base = np.floor(idx).astype(int)
        hits = np.zeros(len(idx), bool)
        for offset in np.ndindex(4, 4, 4):
            voxel = base + np.array(offset) - 1
            near = np.all(np.abs(voxel - idx) <= tol, axis=1)
            near &= np.all((voxel >= 0) & (voxel < shape), axis=1)
            v = np.clip(voxel, 0, shape - 1)
            hits |= near & (data[v[:, 0], v[:, 1], v[:, 2]] == label)
        return float(hits.mean())

    rng = np.random.default_rng(0)
    for surface in surfaces:
        tissue = surface.metadata["medscan"]["tissue"]
        verts = np.asarray(surface.data[0], dtype=np.float64)
        verts = verts[rng.choice(len(verts), size=min(len(verts), 3000), replace=False)]
        world = np.array([surface.data_to_world(v) for v in verts])
        assert within(world, ids[tissue], 1.0) >= 0.97, tissue
        assert within(world, ids[tissue], 1.5) >= 0.999, tissue
        ras = world * np.array([1.0, -1.0, -1.0])  # LPS <-> RAS flips the P and L axes
        assert within(ras, ids[tissue], 1.0) < 0.5, tissue


def test_batch_folder_opens_every_case_and_skips_a_broken_one(segment_out, case_dir, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / case_dir.name).symlink_to(case_dir)
    broken = batch / "ct-broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"case_id": "ct-broken", "status": "ok"}))
    (broken / "volume.nii.gz").write_bytes(b"not a nifti")
    assert _reader.classify(batch) == "batch"
    with pytest.warns(UserWarning, match="ct-broken"):
        layers = _layers(str(batch))
    assert {layer.metadata["medscan"]["case_id"] for layer in layers} == {case_dir.name}
    # The real batch output folder (with index.csv) works too.
    assert _reader.classify(segment_out) == "batch"
    assert len(_layers(str(segment_out))) == len(_layers(str(case_dir)))


def test_single_nifti_and_mesh_files(case_dir):
    manifest = json.loads((case_dir / "manifest.json").read_text())
    (labels,) = _layers(str(case_dir / "labels.nii.gz"))
    assert type(labels).__name__ == "Labels"
    assert set(labels.features["name"]) >= {e["name"] for e in manifest["labels"].values()}
    (image,) = _layers(str(case_dir / "volume.nii.gz"))
    assert type(image).__name__ == "Image"
    np.testing.assert_allclose(image.scale, labels.scale)
    mesh_path = case_dir / manifest["meshes"][0]["path"]
    (surface,) = _layers(str(mesh_path))
    assert type(surface).__name__ == "Surface"
    assert surface.metadata["medscan"]["tissue"] == mesh_path.stem


def test_dicom_folder_reader_matches_case_world(sample_ct, case_dir):
    """The sample dragged in as DICOM lands on the same world points as the case's NIfTI."""
    assert _reader.classify(sample_ct) == "dicom"
    (dicom_image,) = _layers(str(sample_ct))
    (case_image,) = _layers(str(case_dir / "volume.nii.gz"))
    assert dicom_image.data.shape == case_image.data.shape
    np.testing.assert_allclose(
        lps_affine_from_layer(dicom_image), lps_affine_from_layer(case_image), atol=1e-3
    )
    np.testing.assert_array_equal(np.asarray(dicom_image.data), np.asarray(case_image.data))


def test_view_rejects_unknown_path(tmp_path, capsys):
    from medscan.napari.view import main

    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def _not_blank(path: Path) -> tuple[float, float]:
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    background = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)
    differs = np.abs(rgb - background).max(axis=2) > 30
    return float(differs.mean()), float(rgb.std())


@pytest.mark.napari
def test_3d_screenshot_of_case_is_not_blank(make_napari_viewer, case_dir):
    viewer = make_napari_viewer(show=True)
    from medscan.napari.view import show_3d

    layers = viewer.open(str(case_dir), plugin="medscan")
    assert len(layers) >= 3
    show_3d(viewer)  # anterior view; CT and labels hidden, the meshes show
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "napari-case-3d.png"
    viewer.screenshot(str(shot), canvas_only=True, flash=False)
    fraction, std = _not_blank(shot)
    assert fraction > 0.05, fraction
    assert std > 10, std


@pytest.mark.napari
@pytest.mark.slow
def test_medscan_view_cli_screenshot(case_dir, tmp_path):
    shot = tmp_path / "view.png"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "medscan.cli", "view", str(case_dir), "--3d"]
    proc = subprocess.run(
        [*cmd, "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fraction, std = _not_blank(shot)
    assert fraction > 0.05 and std > 10
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "napari-view-cli-3d.png")


@pytest.mark.napari
def test_3d_view_has_patient_chirality(make_napari_viewer, case_dir):
    """Anterior view, head up: a marker on the patient's left appears on the screen's right."""
    from PIL import Image

    from medscan.napari.view import camera

    viewer = make_napari_viewer(show=True)
    for layer in viewer.open(str(case_dir), plugin="medscan"):
        layer.visible = type(layer).__name__ == "Surface"
    lo, hi = viewer.layers.extent.world
    mid = (lo + hi) / 2
    # World (I, P, L): most superior = smallest I; patient's left = largest L.
    marker = viewer.add_points(
        [[lo[0], mid[1], hi[2]]], size=40, face_color="lime", border_width=0
    )
    marker.units = ("mm", "mm", "mm")
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera(viewer).set_view_direction((0, 1, 0), up_direction=(-1, 0, 0))
    shot = ARTIFACTS / "napari-chirality.png"
    ARTIFACTS.mkdir(exist_ok=True)
    viewer.screenshot(str(shot), canvas_only=True, flash=False)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    green = (rgb[..., 1] > 200) & (rgb[..., 0] < 80) & (rgb[..., 2] < 80)
    ys, xs = np.nonzero(green)
    assert len(xs) > 20
    assert xs.mean() / rgb.shape[1] > 0.6  # patient's left on the right
    assert ys.mean() / rgb.shape[0] < 0.4  # head up


@pytest.mark.napari
@pytest.mark.slow
def test_ct_segmentation_widget_end_to_end(
    make_napari_viewer, qtbot, sample_ct, case_dir, tmp_path
):
    """DICOM in, segment in a worker, same labels as the job, sliders matter, save a case."""
    from importlib.resources import files

    import yaml

    from medscan.napari._widget import band_bounds

    viewer = make_napari_viewer(show=True)
    (ct,) = viewer.open(str(sample_ct), plugin="medscan")
    _, widget = viewer.window.add_plugin_dock_widget("medscan", "CT segmentation")
    assert widget.layer_combo.value is ct
    config = yaml.safe_load((files("medscan_conf") / "tissues" / "default.yaml").read_text())
    for name, spec in config["bands"].items():
        assert band_bounds(widget.sliders[name].value) == tuple(spec["hu"]), name

    def run():
        before = widget.result
        worker = widget.run()
        assert worker is not None
        # run() returned while the work goes on in a worker thread: no new result yet.
        assert widget.result is before
        qtbot.waitUntil(lambda: widget.result is not before, timeout=600_000)
        qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=10_000)
        return widget.result

    first = run()
    assert first.status == "ok", first.reason
    case_id = first.case_id
    assert case_id == case_dir.name  # same loader, same pseudonymous id as the job
    layers = viewer.layers
    widget_labels = layers[f"{case_id} labels"]
    job_labels = next(la for la in _layers(str(case_dir)) if type(la).__name__ == "Labels")
    np.testing.assert_array_equal(np.asarray(widget_labels.data), np.asarray(job_labels.data))
    np.testing.assert_allclose(widget_labels.scale, job_labels.scale)
    np.testing.assert_allclose(widget_labels.translate, job_labels.translate)
    job_manifest = json.loads((case_dir / "manifest.json").read_text())
    for tissue in {m["tissue"] for m in job_manifest["meshes"]}:
        assert type(layers[f"{case_id} {tissue} mesh"]).__name__ == "Surface"
    job_metrics = json.loads((case_dir / "metrics.json").read_text())
    shown = {
        widget.metrics_table.item(i, 0).text(): widget.metrics_table.item(i, 1).text()
        for i in range(widget.metrics_table.rowCount())
    }
    assert shown["lung_volume_ml"] == f"{job_metrics['lung_volume_ml']:.2f}"
    # Saved with the job's defaults it is the job's case: same voxels in the same storage
    # order and affine, same label map, same metrics.
    same = widget.save(tmp_path / "first")
    for name in ("volume.nii.gz", "labels.nii.gz"):
        mine, job = Volume.from_nifti(same / name), Volume.from_nifti(case_dir / name)
        np.testing.assert_array_equal(mine.hu, job.hu)
        np.testing.assert_allclose(mine.affine, job.affine, atol=1e-6)
    assert json.loads((same / "metrics.json").read_text()) == job_metrics

    # A narrower fat band on the slider gives less fat.
    fat_before = first.metrics["tissues"]["fat"]["volume_ml"]
    widget.sliders["fat"].value = (-100, -29)
    second = run()
    assert second.metrics["tissues"]["fat"]["volume_ml"] < fat_before

    saved = widget.save(tmp_path / "saved")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["case_id"] == case_id
    assert manifest["config"]["tissues"]["bands"]["fat"]["hu"] == [-100, -29]
    assert manifest["input_hash"] == job_manifest["input_hash"]  # same DICOM files hashed
    assert (tmp_path / "saved" / "index.csv").read_text().count(case_id) == 1
    reopened = _layers(str(saved))
    assert [type(la).__name__ for la in reopened][:2] == ["Image", "Labels"]
    shown_now = np.asarray(viewer.layers[f"{case_id} labels"].data)  # the second run's
    np.testing.assert_array_equal(np.asarray(reopened[1].data), shown_now)


@pytest.mark.napari
def test_2d_axial_slice_is_radiological(make_napari_viewer, case_dir):
    """In 2D the patient's left lung is drawn on the right of the screen (radiological view)."""
    from PIL import Image

    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(case_dir), plugin="medscan")
    labels = next(layer for layer in layers if type(layer).__name__ == "Labels")
    for layer in layers:
        layer.visible = layer is labels
    ids = dict(zip(labels.features["name"], labels.features["index"], strict=True))
    labels.opacity = 1.0
    labels.show_selected_label = True
    nz = labels.data.shape[0]
    viewer.dims.set_point(0, labels.data_to_world((nz // 2, 0, 0))[0])
    viewer.reset_view()
    centres = {}
    for side in ("lung_left", "lung_right"):
        labels.selected_label = int(ids[side])
        shot = ARTIFACTS / f"napari-2d-{side}.png"
        ARTIFACTS.mkdir(exist_ok=True)
        viewer.screenshot(str(shot), canvas_only=True, flash=False)
        rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        _, xs = np.nonzero(rgb.max(axis=2) > 40)
        assert len(xs) > 500, side
        centres[side] = xs.mean() / rgb.shape[1]
    assert centres["lung_left"] > 0.5 > centres["lung_right"], centres


def test_failed_case_still_opens_with_a_warning(case_dir, tmp_path):
    failed = tmp_path / case_dir.name
    shutil.copytree(case_dir, failed)
    manifest = json.loads((failed / "manifest.json").read_text())
    manifest.update(status="failed", reason="no lungs found (test)")
    (failed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="no lungs found"):
        layers = _layers(str(failed))
    assert {layer.metadata["medscan"]["status"] for layer in layers[:2]} == {"failed"}


def _leaves(value, path=()):
    """Every cell of a metrics mapping: ``(path, value)``; lists are one cell."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, (*path, key))
    else:
        yield path, value


def test_every_metric_is_in_one_table_cell(case_dir):
    """The reader's tables (the widget shows the same) hold each metrics.json number once.

    Walks the JSON independently of the table builder: the (key path, value) pairs of the table
    cells equal those of the metrics file, so a new metric block shows up without a list of
    expected keys, and none is dropped or shown twice. Left out of the cells, by design
    (medscan.io.tables): band voxel counts, and the band definition and region bounds,
    which are the tables' notes.
    """
    from medscan.io.tables import DENSITY, REGIONS, metric_tables

    metrics = json.loads((case_dir / "metrics.json").read_text())
    assert {DENSITY, REGIONS, "structures"} <= set(metrics)  # issue 14's blocks are there
    image = _layers(str(case_dir))[0]
    tables = image.metadata["medscan"]["tables"]
    assert tables == [t.to_dict() for t in metric_tables(metrics)]
    cells = []
    for table in tables:
        for row, sources in zip(table["rows"], table["sources"], strict=True):
            cells += [(tuple(path), row[column]) for column, path in sources.items()
                      if path[-1] != "bands"]  # the HU column: a range made from the definition

    def in_note(path):
        return (path[0] == DENSITY and path[1] == "definition") or (
            path[0] == REGIONS and path[2] == "bounds")

    expected = [(p, v) for p, v in _leaves(metrics)
                if not in_note(p) and not ("bands" in p and p[-1] == "voxels")]
    assert sorted(cells, key=repr) == sorted(expected, key=repr)
    notes = " ".join(t["note"] for t in tables)
    assert metrics[DENSITY]["definition"]["source"] in notes
    bounded = {lung: r for lung, r in metrics[REGIONS].items() if "bounds" in r}
    assert bounded
    for lung, regions in bounded.items():
        assert f"{lung} bounds" in notes and f"{regions['bounds']['ap_split_mm']:.2f}" in notes
    # The band table reads like Lung CT Analyzer's: a row per band, mL and % per lung.
    bands = next(t for t in tables if t["title"] == DENSITY)
    names = [r["name"] for r in bands["rows"]]
    assert names == list(metrics[DENSITY]["total"]["bands"])
    total_ml = sum(r["total mL"] for r in bands["rows"])
    assert total_ml == pytest.approx(metrics[DENSITY]["total"]["volume_ml"], abs=0.01)
    shown = {r["name"]: (r.get("HU"), tip) for r, tip in zip(bands["rows"], bands["tips"],
                                                              strict=True)}
    for band in metrics[DENSITY]["definition"]["bands"]:  # HU range and source per band
        hu, tip = shown[band["name"]]
        assert hu == f"[{band['hu_min']:g}, {band['hu_max']:g})"
        assert tip.get("HU") == band["source"]
