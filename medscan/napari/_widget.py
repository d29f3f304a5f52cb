"""napari widgets: CT window presets and CT segmentation."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from medscan.io.tables import SUMMARY, MetricTable, metric_tables
from medscan.napari.layers import WINDOW_PRESETS, labels_layer, surface_layer

if TYPE_CHECKING:
    import napari

#: Slider range of the HU band sliders; a band end at either extreme means "unbounded".
HU_SLIDER_MIN = -1024
HU_SLIDER_MAX = 3071


def apply_window(layer: napari.layers.Image, preset: str) -> None:
    """Set a CT window preset (a key of :data:`WINDOW_PRESETS`) on an Image layer of HU."""
    if preset not in WINDOW_PRESETS:
        raise ValueError(f"unknown CT window {preset!r}; choose from {sorted(WINDOW_PRESETS)}")
    layer.contrast_limits = WINDOW_PRESETS[preset]
    layer.metadata.setdefault("medscan", {})["window"] = preset


def ct_window_widget():
    """A magicgui widget: pick an Image layer and a CT window (lung, mediastinum, bone)."""
    from magicgui import magicgui

    @magicgui(
        call_button="Apply window",
        preset={"choices": list(WINDOW_PRESETS), "label": "window"},
        layer={"label": "CT layer"},
    )
    def ct_window(layer: napari.layers.Image, preset: str = "lung") -> None:
        if layer is not None:
            apply_window(layer, preset)

    return ct_window


def volume_from_layer(layer: napari.layers.Image):
    """A :class:`medscan.volume.Volume` (HU + LPS affine) from a CT Image layer.

    The LPS affine is read back from the layer's own transforms (what napari displays), so
    any 3D image placed in the medscan world works, whoever made it.
    """
    from medscan.napari.geometry import lps_affine_from_layer
    from medscan.volume import Volume

    if layer.ndim != 3 or getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is not a 3D CT volume")
    meta = layer.metadata.get("medscan", {})
    affine = lps_affine_from_layer(layer)
    hu = np.ascontiguousarray(layer.data)
    case_id = str(meta.get("case_id") or layer.name.split()[0])
    sources = meta.get("files") or ([meta["path"]] if meta.get("path") else [])
    return Volume(
        hu=hu,
        affine=affine,
        case_id=case_id,
        metadata=dict(meta.get("series", {})),
        files=[str(f) for f in sources],
    )


def band_bounds(value: tuple[float, float]) -> tuple[float | None, float | None]:
    """Slider value -> HU band ``[lo, hi)``; a slider end at its extreme means unbounded."""
    lo, hi = float(value[0]), float(value[1])
    return (None if lo <= HU_SLIDER_MIN else lo, None if hi >= HU_SLIDER_MAX else hi)


class CTSegmentationWidget(QWidget):
    """Dock widget: HU band sliders, segmentation in a worker thread, metrics, save a case.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from magicgui.widgets import ComboBox, Container, FileEdit, RangeSlider

        from medscan.ct.tissues import default_tissues

        self.viewer = napari_viewer
        self.tissues = default_tissues()
        self.result: dict[str, Any] | None = None
        self.worker: Any = None

        self.layer_combo = ComboBox(label="CT image", choices=self._image_layers)
        self.backend_combo = ComboBox(label="backend", choices=["cpu", "auto"], value="cpu")
        self.sliders: dict[str, RangeSlider] = {}
        for band in self.tissues.bands:
            lo = HU_SLIDER_MIN if band.hu_min is None else int(band.hu_min)
            hi = HU_SLIDER_MAX if band.hu_max is None else int(band.hu_max)
            self.sliders[band.name] = RangeSlider(
                min=HU_SLIDER_MIN, max=HU_SLIDER_MAX, value=(lo, hi), label=f"{band.name} HU"
            )
        self.run_button = QPushButton("Run segmentation")
        self.run_button.clicked.connect(self.run)
        self.output_edit = FileEdit(mode="d", label="output folder")
        self.save_button = QPushButton("Save case folder")
        self.save_button.clicked.connect(lambda: self.save(self.output_edit.value))
        self.save_button.setEnabled(False)
        self.status = QLabel("load a CT (DICOM folder or volume.nii.gz), then run")
        self.status.setWordWrap(True)
        self.metrics_table = _table_widget(["metric", "value"])
        # one tab per metrics.json block (summary, tissues, coverage, density bands, regions,
        # per-structure statistics, ...): medscan.io.tables
        self.tabs = QTabWidget()
        self.tabs.addTab(self.metrics_table, SUMMARY)
        self.tables: dict[str, QTableWidget] = {SUMMARY: self.metrics_table}

        layout = QVBoxLayout(self)
        # a Container draws each control's label ("fat HU", ...) beside it
        controls = Container(widgets=[self.layer_combo, self.backend_combo,
                                      *self.sliders.values()])
        layout.addWidget(controls.native)
        layout.addWidget(self.run_button)
        layout.addWidget(self.status)
        layout.addWidget(self.tabs)
        layout.addWidget(Container(widgets=[self.output_edit]).native)
        layout.addWidget(self.save_button)
        events = self.viewer.layers.events
        events.inserted.connect(self._reset_choices)
        events.removed.connect(self._reset_choices)

    # ------------------------------------------------------------------ helpers
    def _image_layers(self, *_: Any) -> list[Any]:
        from napari.layers import Image

        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb
        ]

    def _reset_choices(self, *_: Any) -> None:
        self.layer_combo.reset_choices()

    def tissue_table(self):
        """The tissue table with the bands as set on the sliders."""
        bands = []
        for band in self.tissues.bands:
            lo, hi = band_bounds(self.sliders[band.name].value)
            bands.append(dataclasses.replace(band, hu_min=lo, hu_max=hi))
        return dataclasses.replace(self.tissues, bands=bands)

    # ------------------------------------------------------------------ running
    def run(self) -> Any:
        """Segment the chosen CT layer in a worker thread; returns the started worker."""
        from napari.qt.threading import thread_worker

        from medscan.napari import _pipeline

        layer = self.layer_combo.value
        if layer is None:
            self.status.setText("no CT image layer: open a DICOM folder or a volume.nii.gz")
            return None
        volume = volume_from_layer(layer)
        table = self.tissue_table()
        backend = self.backend_combo.value

        @thread_worker
        def work():
            return _pipeline.run_case(volume, table, backend=backend)

        self.run_button.setEnabled(False)
        self.save_button.setEnabled(False)
        self.status.setText(f"segmenting {volume.case_id} ({backend}) ...")
        self.worker = work()
        self.worker.returned.connect(self._show_result)
        self.worker.errored.connect(self._show_error)
        self.worker.finished.connect(lambda: self.run_button.setEnabled(True))
        self.worker.start()
        return self.worker

    def _show_error(self, exc: Exception) -> None:
        self.status.setText(f"segmentation failed: {type(exc).__name__}: {exc}")

    def _show_result(self, result: dict[str, Any]) -> None:
        old = self.result
        if old is not None and old.get("staging") != result.get("staging"):
            shutil.rmtree(old["staging"], ignore_errors=True)
        self.result = result
        volume = result["volume"]
        case_id = volume.case_id
        table = {
            int(k): {"name": v["name"], "color": v["color"]} for k, v in result["labels"].items()
        }
        from medscan.napari.layers import label_table

        table = label_table(table)
        metrics = result["metrics"]
        meta = {
            "case_id": case_id,
            "status": result["status"],
            "metrics": metrics,
            "source": "CT segmentation widget",
        }
        tuples = [
            labels_layer(
                result["label_map"],
                volume.affine,
                f"{case_id} labels",
                table,
                tissue_metrics=metrics.get("tissues"),
                metadata=meta,
            )
        ]
        colors = {entry["name"]: entry["color"] for entry in table.values()}
        for tissue, (vertices, faces) in result["meshes"].items():
            tuples.append(
                surface_layer(
                    vertices,
                    faces,
                    f"{case_id} {tissue} mesh",
                    colors.get(tissue),
                    metadata={**meta, "tissue": tissue},
                )
            )
        for data, kwargs, kind in tuples:
            name = kwargs["name"]
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self._fill_metrics(metrics)
        self.save_button.setEnabled(True)
        self.status.setText(
            f"{case_id}: status {result['status']}"
            + (f" ({result['reason']})" if result["reason"] else "")
            + f"; {len(result['meshes'])} meshes; {result['seconds']:.1f} s"
        )

    def _fill_metrics(self, metrics: dict[str, Any]) -> None:
        """One tab per table of :func:`medscan.io.tables.metric_tables`."""
        while self.tabs.count() > 1:  # the summary tab stays (it is ``metrics_table``)
            self.tabs.removeTab(1)
        self.tables = {SUMMARY: self.metrics_table}
        self.metrics_table.setRowCount(0)
        for table in metric_tables(metrics):
            if table.title == SUMMARY:
                _fill_table(self.metrics_table, table, header=["metric", "value"])
                continue
            view = _table_widget(table.columns)
            _fill_table(view, table)
            self.tables[table.title] = view
            self.tabs.addTab(_with_note(view, table.note), table.title.replace("_", " "))

    def save(self, output: str | Path) -> Path:
        """Write the last result as a case folder under ``output`` (the segment job's layout)."""
        from medscan.napari import _pipeline

        if self.result is None:
            raise RuntimeError("run the segmentation first")
        case_dir = _pipeline.save_case(self.result, Path(output))
        self.status.setText(f"saved {case_dir}")
        return case_dir


def _table_widget(header: list[str]) -> QTableWidget:
    """A read-only, sortable table with these column headers."""
    view = QTableWidget(0, len(header))
    view.setHorizontalHeaderLabels(header)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.verticalHeader().setVisible(False)
    view.verticalHeader().setDefaultSectionSize(view.fontMetrics().height() + 6)
    return view


def _with_note(view: QTableWidget, note: str) -> QWidget:
    """The table, under its note (band definitions, region bounds) when it has one."""
    if not note:
        return view
    page = QWidget()
    layout = QVBoxLayout(page)
    layout.setContentsMargins(0, 0, 0, 0)
    label = QLabel(note)
    label.setWordWrap(True)
    layout.addWidget(label)
    layout.addWidget(view, stretch=1)
    return page


def _fill_table(view: QTableWidget, table: MetricTable, header: list[str] | None = None) -> None:
    """Show ``table`` in ``view`` (cells as :func:`medscan.io.tables.format_value`)."""
    view.setColumnCount(len(table.columns))
    view.setHorizontalHeaderLabels(header or table.columns)
    view.setRowCount(len(table.rows))
    for i in range(len(table.rows)):
        for j, column in enumerate(table.columns):
            view.setItem(i, j, QTableWidgetItem(table.cell(i, column)))
    view.resizeColumnsToContents()
