"""napari widgets: CT window presets and CT segmentation."""

from __future__ import annotations

import dataclasses
import time
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
from medscan.napari.layers import WINDOW_PRESETS

if TYPE_CHECKING:
    import napari

    from medscan.case import CaseResult

#: ``metadata["medscan"]["source"]`` of layers the widget adds, and ``config.source`` of cases
#: it saves.
WIDGET_SOURCE = "napari CT segmentation widget"

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
    any 3D image placed in the medscan world works, whoever made it. A layer opened by the
    medscan reader goes back to the loader's voxel order
    (:func:`~medscan.napari.geometry.restore_orientation`) and gets its loader findings and
    source files back, so the widget analyses the volume ``medscan segment`` would.
    """
    from medscan.napari.geometry import lps_affine_from_layer, restore_orientation
    from medscan.volume import Finding, Volume

    if layer.ndim != 3 or getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is not a 3D CT volume")
    meta = layer.metadata.get("medscan", {})
    affine = lps_affine_from_layer(layer)
    hu = np.asarray(layer.data)
    if meta.get("source_lps_affine") is not None:
        hu, affine = restore_orientation(hu, affine, np.asarray(meta["source_lps_affine"]))
    case_id = str(meta.get("case_id") or layer.name.split()[0])
    sources = meta.get("files") or ([meta["path"]] if meta.get("path") else [])
    findings = [Finding(**f) for f in meta.get("findings") or []]
    return Volume(
        hu=np.ascontiguousarray(hu),
        affine=affine,
        case_id=case_id,
        metadata=dict(meta.get("series", {})),
        files=[str(f) for f in sources],
        findings=findings,
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
        self.result: CaseResult | None = None
        self.made: dict[str, Any] = {}
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

        self.setMinimumWidth(520)  # the band table (8 columns) without scrolling
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
    def case_options(self):
        """``medscan segment``'s case options with the bands as set on the sliders."""
        from medscan.ct.analyse import CaseOptions

        return dataclasses.replace(CaseOptions.defaults(), tissues=self.tissue_table())

    def run(self) -> Any:
        """Analyse the chosen CT layer in a worker thread; returns the started worker.

        The worker calls :func:`medscan.ct.analyse.analyse` (what ``medscan segment`` runs for
        each case); nothing is written until :meth:`save`.
        """
        from napari.qt.threading import thread_worker

        from medscan.backend import get_backend
        from medscan.ct.analyse import analyse
        from medscan.napari._reader import load_options

        layer = self.layer_combo.value
        if layer is None:
            self.status.setText("no CT image layer: open a DICOM folder or a volume.nii.gz")
            return None
        volume = volume_from_layer(layer)
        options = self.case_options()
        backend = self.backend_combo.value
        meta = layer.metadata.get("medscan", {})
        made = {
            "options": options,
            "load": {**load_options(), **dict(meta.get("load") or {})},
            "source_root": str(meta["path"]) if meta.get("path") else None,
            "series": dict(meta.get("series") or {}),
            "patient_id": meta.get("patient_id") or "",
        }

        @thread_worker
        def work():
            t0 = time.perf_counter()
            be = get_backend(backend)
            result = analyse(volume, options, be)
            return result, {**made, "backend": be.name, "seconds": time.perf_counter() - t0}

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

    def _show_result(self, returned: tuple[CaseResult, dict[str, Any]]) -> None:
        """Show a result: labels and meshes (as the reader shows a case), metric tables."""
        from medscan.napari._reader import case_layers

        result, made = returned
        self.made = made
        self.result = result
        for data, kwargs, kind in case_layers(result, image=False, source=WIDGET_SOURCE):
            name = kwargs["name"]
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self._fill_metrics(result.metrics)
        self.save_button.setEnabled(True)
        self.status.setText(
            f"{result.case_id}: status {result.status}"
            + (f" ({result.reason})" if result.reason else "")
            + f"; {len(result.surfaces)} meshes; {made['seconds']:.1f} s"
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
        """Write the last result as ``output/<case_id>/`` with :func:`medscan.io.write_case`.

        The provenance is the job's (:meth:`medscan.case.Provenance.for_files` over the
        series' files, the hash of :func:`medscan.ct.analyse.case_config`), so with the
        default bands a ``medscan segment`` rerun on the same DICOM tree finds the case
        current and leaves it alone. ``index.csv`` is rebuilt.
        """
        if self.result is None:
            raise RuntimeError("run the segmentation first")
        case_dir = save_result(self.result, self.made, output)
        self.status.setText(f"saved {case_dir}")
        return case_dir


def save_result(result: CaseResult, made: dict[str, Any], output: str | Path) -> Path:
    """Write a widget result with the job's writer and provenance (see :meth:`save`).

    Parameters
    ----------
    result : CaseResult
        From :func:`medscan.ct.analyse.analyse`.
    made : dict
        How it was made: ``options`` (CaseOptions), ``load`` (``uniform``, ``free_text``),
        ``backend``, ``seconds``, ``source_root`` and ``series`` (the loader's metadata).
    output : str or Path
        Batch output folder.

    Returns
    -------
    Path
        The case folder.
    """
    from medscan.case import Provenance
    from medscan.ct.analyse import case_config
    from medscan.io import write_case
    from medscan.io.redact import series_block

    options = made["options"]
    free_text = bool(made["load"].get("free_text"))
    hashed = case_config(options, bool(made["load"].get("uniform")), free_text)
    volume = result.volume
    provenance = Provenance.for_files(
        list(volume.files) if volume is not None else [],
        {**hashed, "backend": {"name": made["backend"]}, "source": WIDGET_SOURCE},
        case_config=hashed,
        root=made.get("source_root"),
        backend=made["backend"],
        # the job's series block (ids, modality, slices, transfer syntax, coded metadata)
        series=series_block(result.case_id, str(made.get("patient_id") or ""),
                            made.get("series") or {}, free_text)
        if made.get("series") else None,
    )
    provenance.seconds = round(float(made["seconds"]), 3)
    return write_case(result, output, provenance, mesh_formats=options.mesh_formats,
                      outputs=options.outputs, report=options.report)


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
        tips = table.tips[i] if i < len(table.tips) else {}
        for j, column in enumerate(table.columns):
            item = QTableWidgetItem(table.cell(i, column))
            if column in tips:
                item.setToolTip(tips[column])
            view.setItem(i, j, item)
    view.resizeColumnsToContents()
