"""The "X-ray review" widget on the embedded X-rays, with a tiny checkpoint trained for real."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("timm")

from medscan.napari._xray_widget import overlay_transform, read_predictions
from medscan.xray.data import preprocess, read_image

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def _medscan(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "medscan.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(scope="session")
def xray_run(tmp_path_factory, sample_xray) -> dict[str, Path]:
    """`medscan train` (smoke, 64 px) then `medscan predict gradcam=true` on the sample."""
    work = tmp_path_factory.mktemp("napari-xray")
    _medscan(
        "train",
        f"data.root={sample_xray}",
        "trainer=smoke",
        "trainer.max_epochs=1",
        "data.image_size=64",
        "data.num_workers=0",
        f"output={work / 'train'}",
        cwd=work,
    )
    ckpt = work / "train" / "checkpoints" / "best.pt"
    _medscan(
        "predict",
        f"checkpoint={ckpt}",
        f"input={sample_xray}",
        f"output={work / 'predict'}",
        "gradcam=true",
        cwd=work,
    )
    return {"checkpoint": ckpt, "predictions": work / "predict" / "predictions.csv"}


@pytest.mark.parametrize("resize", ["squash", "pad"])
def test_overlay_transform_puts_model_pixels_back_on_the_image(sample_xray, resize):
    """Model-input pixels, placed by the transform, sample the original at the same anatomy."""
    path = sorted((sample_xray / "PNEUMONIA").iterdir())[0]
    original = read_image(path)
    original = original[:, : int(original.shape[1] * 0.7)]  # make it clearly non-square
    size = 48
    small = preprocess(original, size, resize)
    scale, translate = overlay_transform(original.shape, size, resize)
    rr, cc = np.mgrid[0:size, 0:size]
    y = np.rint(rr * scale[0] + translate[0]).astype(int)
    x = np.rint(cc * scale[1] + translate[1]).astype(int)
    inside = (y >= 0) & (y < original.shape[0]) & (x >= 0) & (x < original.shape[1])
    if resize == "pad":
        assert not inside.all()  # the letterbox bars fall outside the image
    corr = np.corrcoef(small[inside], original[y[inside], x[inside]])[0, 1]
    assert corr > 0.95, corr
    # And the transform matters: without it (identity) the match is poor.
    y0, x0 = np.clip(rr, 0, original.shape[0] - 1), np.clip(cc, 0, original.shape[1] - 1)
    assert np.corrcoef(small.ravel(), original[y0, x0].ravel())[0, 1] < 0.8


def test_read_predictions_names_a_bad_file(tmp_path):
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"other\.csv"):
        read_predictions(bad)


def _not_blank(path: Path) -> tuple[float, float]:
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    background = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)
    return float((np.abs(rgb - background).max(axis=2) > 30).mean()), float(rgb.std())


@pytest.mark.napari
@pytest.mark.slow
def test_xray_review_from_predictions_csv(make_napari_viewer, xray_run):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("medscan", "X-ray review")
    widget.load_predictions(xray_run["predictions"])
    with xray_run["predictions"].open() as handle:
        expected = list(csv.DictReader(handle))
    assert len(widget.rows) == len(expected) == 16
    assert widget.table.rowCount() == 16

    row = expected[0]
    image = viewer.layers["X-ray"]
    assert image.data.shape == read_image(row["file"]).shape
    assert f"P(pneumonia) = {float(row['prob_pneumonia']):.3f}" in widget.status.text()
    assert f"true {row['label']}" in widget.status.text()
    cam = viewer.layers["Grad-CAM"]  # from predict's gradcam/ PNGs
    # predict's figure on the original film, caption cut off: pixel for pixel on the image
    assert cam.rgb and cam.data.shape == (*image.data.shape, 3) and cam.visible
    np.testing.assert_allclose(cam.scale, [1.0, 1.0])

    widget.show_image(len(expected) - 1)  # a PNEUMONIA image
    last = expected[-1]
    assert viewer.layers["X-ray"].metadata["medscan"]["file"] == last["file"]
    assert f"true {last['label']}" in widget.status.text()
    viewer.reset_view()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "napari-xray-review.png"
    viewer.screenshot(str(shot), canvas_only=True, flash=False)
    fraction, std = _not_blank(shot)
    assert fraction > 0.2 and std > 20, (fraction, std)

    widget.cam_check.setChecked(False)
    assert not viewer.layers["Grad-CAM"].visible


@pytest.mark.napari
@pytest.mark.slow
def test_xray_review_folder_and_checkpoint(make_napari_viewer, qtbot, xray_run, sample_xray):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("medscan", "X-ray review")
    worker = widget.predict_folder(sample_xray / "PNEUMONIA", xray_run["checkpoint"])
    assert worker is not None and widget.rows == []  # predicting in a worker thread
    qtbot.waitUntil(lambda: len(widget.rows) == 8, timeout=120_000)
    job = {r["file"]: r for r in read_predictions(xray_run["predictions"])}
    for row in widget.rows:
        assert row["label"] == "PNEUMONIA"
        assert row["prob_pneumonia"] == pytest.approx(job[row["file"]]["prob_pneumonia"], abs=1e-5)
    # Grad-CAM is computed live from the checkpoint, and matches the predict job's PNG.
    from PIL import Image

    cam = viewer.layers["Grad-CAM"].data
    name = Path(widget.rows[0]["file"]).stem
    png = Path(xray_run["predictions"]).parent / "gradcam" / f"{name}.png"
    from medscan.xray.explain import caption_height

    saved = np.asarray(Image.open(png).convert("RGB"))
    saved = saved[: saved.shape[0] - caption_height(saved.shape[1])]
    assert cam.shape == saved.shape
    assert np.abs(cam.astype(int) - saved.astype(int)).mean() < 2.0
