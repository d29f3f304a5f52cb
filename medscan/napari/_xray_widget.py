"""napari widget "X-ray review": browse chest X-rays with P(pneumonia), true label and Grad-CAM.

Two ways in:

* open a ``predictions.csv`` written by ``medscan predict`` / ``medscan evaluate``
  (columns ``file,label,prob_pneumonia,pred``); Grad-CAM overlays come from the PNGs in
  ``gradcam/`` beside it (``medscan predict gradcam=true``), or are computed when a
  checkpoint is loaded too;
* or pick an image folder and a checkpoint (``checkpoints/best.pt``): predictions run in a
  worker thread through :func:`medscan.xray.predict_images`, Grad-CAM through
  :func:`medscan.xray.gradcam`.

The image is shown in its own pixels (``X-ray`` layer); the Grad-CAM overlay, computed at the
model's input size, is placed over it with the scale/translate that undoes the model's resize
(``squash`` or ``pad``), in the ``Grad-CAM`` layer.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

IMAGE_LAYER = "X-ray"
CAM_LAYER = "Grad-CAM"


def overlay_transform(
    image_shape: tuple[int, int], size: int, resize: str = "squash"
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Scale and translate that put a ``(size, size)`` model-input overlay on the original image.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` of the original image in pixels.
    size : int
        Side of the model input (``info["image_size"]``).
    resize : {"squash", "pad"}
        How :func:`medscan.xray.data.preprocess` made the model input.

    Returns
    -------
    scale, translate : tuple of float
        For the overlay layer, in original-image pixels (pixel centres aligned).
    """
    h, w = image_shape
    if resize == "squash":
        sy, sx = h / size, w / size
        return (sy, sx), ((sy - 1) / 2, (sx - 1) / 2)
    if resize == "pad":
        factor = size / max(h, w)
        nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
        y0, x0 = (size - nh) // 2, (size - nw) // 2
        sy, sx = h / nh, w / nw
        return (sy, sx), ((0.5 - y0) * sy - 0.5, (0.5 - x0) * sx - 0.5)
    raise ValueError(f"resize must be 'squash' or 'pad', not {resize!r}")


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``predictions.csv``, with ``file`` resolved and ``prob_pneumonia`` as float.

    Relative ``file`` entries are taken relative to the CSV's folder when that file exists
    there, else to the current directory.

    Raises
    ------
    ValueError
        When the file lacks the ``file`` column; the message names the path.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise ValueError(f"{path}: not a predictions.csv (no 'file' column)")
        rows = []
        for row in reader:
            file = Path(row["file"])
            if not file.is_absolute() and (path.parent / file).exists():
                file = path.parent / file
            prob = row.get("prob_pneumonia") or ""
            rows.append(
                {
                    "file": str(file),
                    "label": row.get("label") or "",
                    "prob_pneumonia": float(prob) if prob.strip() else None,
                    "pred": row.get("pred") or "",
                    "error": row.get("error") or "",
                }
            )
    return rows


class XrayReviewWidget(QWidget):
    """Dock widget: open predictions or predict a folder, browse images with Grad-CAM.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from magicgui.widgets import FileEdit

        self.viewer = napari_viewer
        self.rows: list[dict[str, Any]] = []
        self.index = -1
        self.model: Any = None
        self.info: dict[str, Any] | None = None
        self.gradcam_dir: Path | None = None
        self._cam_cache: dict[str, np.ndarray] = {}
        self.worker: Any = None

        self.csv_edit = FileEdit(mode="r", filter="*.csv", label="predictions.csv")
        self.folder_edit = FileEdit(mode="d", label="image folder")
        self.ckpt_edit = FileEdit(mode="r", filter="*.pt", label="checkpoint")
        open_csv = QPushButton("Open predictions.csv")
        open_csv.clicked.connect(lambda: self.load_predictions(self.csv_edit.value))
        run = QPushButton("Predict folder with checkpoint")
        run.clicked.connect(
            lambda: self.predict_folder(self.folder_edit.value, self.ckpt_edit.value)
        )

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["file", "true", "P(pneumonia)", "predicted"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.currentCellChanged.connect(lambda row, *_: self.show_image(row))

        prev_button, next_button = QPushButton("◀ previous"), QPushButton("next ▶")
        prev_button.clicked.connect(lambda: self.show_image(self.index - 1))
        next_button.clicked.connect(lambda: self.show_image(self.index + 1))
        self.cam_check = QCheckBox("Grad-CAM overlay")
        self.cam_check.setChecked(True)
        self.cam_check.toggled.connect(lambda _: self.show_image(self.index))
        self.status = QLabel("open a predictions.csv, or a folder and a checkpoint")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        for widget in (self.csv_edit, open_csv, self.folder_edit, self.ckpt_edit, run):
            layout.addWidget(getattr(widget, "native", widget))
        nav = QHBoxLayout()
        nav.addWidget(prev_button)
        nav.addWidget(next_button)
        nav.addWidget(self.cam_check)
        layout.addLayout(nav)
        layout.addWidget(self.status)
        layout.addWidget(self.table)

    # ------------------------------------------------------------------ loading
    def load_checkpoint(self, path: str | Path) -> None:
        """Load a classifier checkpoint; Grad-CAM is then computed for every image shown."""
        from medscan.xray import load_checkpoint

        self.model, self.info = load_checkpoint(path)
        self._cam_cache.clear()

    def load_predictions(self, path: str | Path) -> None:
        """Open a ``predictions.csv`` (and its ``gradcam/`` folder, when there is one)."""
        path = Path(path)
        rows = read_predictions(path)
        cam_dir = path.parent / "gradcam"
        self.gradcam_dir = cam_dir if cam_dir.is_dir() else None
        self.set_rows(rows)

    def predict_folder(self, folder: str | Path, checkpoint: str | Path) -> Any:
        """Predict every image under ``folder`` with ``checkpoint`` in a worker thread.

        Returns
        -------
        napari.qt.threading.WorkerBase
            The started worker (its ``returned`` signal fills the table).
        """
        from napari.qt.threading import thread_worker

        from medscan.xray import load_checkpoint, predict_images
        from medscan.xray.data import list_images

        @thread_worker
        def work():
            model, info = load_checkpoint(checkpoint)
            return model, info, predict_images(model, info, list_images([folder]))

        def done(result):
            self.model, self.info, rows = result
            self._cam_cache.clear()
            self.gradcam_dir = None
            self.set_rows(rows)

        self.status.setText(f"predicting {folder} ...")
        self.worker = work()
        self.worker.returned.connect(done)
        self.worker.errored.connect(lambda exc: self.status.setText(f"error: {exc}"))
        self.worker.start()
        return self.worker

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        """Fill the table with prediction rows and show the first image."""
        self.rows = list(rows)
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            prob = row.get("prob_pneumonia")
            cells = [
                Path(row["file"]).name,
                row.get("label") or "?",
                "" if prob is None else f"{prob:.3f}",
                row.get("pred") or row.get("error") or "",
            ]
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.blockSignals(False)
        self.index = -1
        if self.rows:
            self.show_image(0)

    # ------------------------------------------------------------------ browsing
    def describe(self, row: dict[str, Any]) -> str:
        """One line about an image: probability, prediction and the true label if known."""
        prob = row.get("prob_pneumonia")
        parts = [Path(row["file"]).name]
        if row.get("error"):
            parts.append(f"unreadable: {row['error']}")
        else:
            parts.append("P(pneumonia) = ?" if prob is None else f"P(pneumonia) = {prob:.3f}")
            parts.append(f"predicted {row.get('pred') or '?'}")
        label = row.get("label")
        parts.append(f"true {label}" if label else "true label unknown")
        if label and row.get("pred"):
            parts.append("correct" if label == row["pred"] else "WRONG")
        return " | ".join(parts)

    def gradcam_for(self, row: dict[str, Any]) -> tuple[np.ndarray, int, str] | None:
        """``(overlay RGB uint8 on the original film, its width, "film")`` for a row, or ``None``.

        Computed live from a loaded checkpoint, or read from ``medscan predict gradcam=true``'s
        figure (the caption strip under the film is cut off).
        """
        file = row["file"]
        if file in self._cam_cache:
            cam = self._cam_cache[file]
            return cam, cam.shape[1], "film"
        cam = None
        if self.model is not None and self.info is not None:
            from medscan.xray.explain import gradcam_on_film

            cam = gradcam_on_film(self.model, self.info, file)[0]
        elif self.gradcam_dir is not None:
            png = self.gradcam_dir / f"{Path(file).stem}.png"
            if png.is_file():
                from PIL import Image

                from medscan.xray.explain import caption_height

                fig = np.asarray(Image.open(png).convert("RGB"))
                cam = fig[: fig.shape[0] - caption_height(fig.shape[1])]
        if cam is None:
            return None
        self._cam_cache[file] = cam
        return cam, cam.shape[1], "film"

    def show_image(self, index: int) -> None:
        """Show image ``index`` (clamped), its numbers and, if enabled, its Grad-CAM overlay."""
        if not self.rows:
            return
        index = int(np.clip(index, 0, len(self.rows) - 1))
        self.index = index
        row = self.rows[index]
        if self.table.currentRow() != index:
            self.table.blockSignals(True)
            self.table.selectRow(index)
            self.table.blockSignals(False)
        text = self.describe(row)
        try:
            from medscan.xray.data import read_image

            image = read_image(row["file"])
        except (ValueError, OSError) as exc:
            self.status.setText(f"{text}\ncannot show: {exc}")
            return
        self._set_layer(IMAGE_LAYER, image, {"colormap": "gray", "contrast_limits": (0.0, 1.0)})
        cam = self.gradcam_for(row) if self.cam_check.isChecked() else None
        if cam is not None:
            overlay, size, resize = cam
            if resize == "film":  # already on the original film, pixel for pixel
                scale, translate = (1.0, 1.0), (0.0, 0.0)
            else:
                scale, translate = overlay_transform(image.shape, size, resize)
            self._set_layer(
                CAM_LAYER, overlay, {"rgb": True, "opacity": 0.6}, scale=scale, translate=translate
            )
        elif CAM_LAYER in self.viewer.layers:
            self.viewer.layers[CAM_LAYER].visible = False
        if self.cam_check.isChecked() and cam is None:
            text += " | no Grad-CAM (load a checkpoint or run predict gradcam=true)"
        self.status.setText(text)
        for name in (IMAGE_LAYER, CAM_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers[name].metadata["medscan"] = {"kind": "xray", **row}

    def _set_layer(self, name, data, kwargs, scale=(1.0, 1.0), translate=(0.0, 0.0)) -> None:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            layer.scale = scale
            layer.translate = translate
            layer.visible = True
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            return
        self.viewer.add_image(data, name=name, scale=scale, translate=translate, **kwargs)
        self.viewer.reset_view()
