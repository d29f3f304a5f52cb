"""Screenshot of the napari CT segmentation widget on the embedded sample (docs/img).

Run under an X display (``xvfb-run -a -s "-screen 0 1920x1200x24"`` headless)::

    .venv/bin/python scripts/napari_widget_screenshot.py docs/img/napari-ct-widget-density.png \
        density_bands

The second argument names the metric table shown (``summary``, ``tissues``, ``density_bands``,
``regions``, ``structures``, ...; see docs/napari.md).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path, table: str) -> list[str]:
    """Open the sample, run the widget, show ``table``, save a window screenshot to ``out``."""
    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from medscan.ct.job import sample_path

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1700, 1000)
    viewer.open(str(sample_path()), plugin="medscan")
    _, widget = viewer.window.add_plugin_dock_widget("medscan", "CT segmentation")
    widget.run()
    app = QApplication.instance()
    while widget.result is None:
        app.processEvents()
    page = widget.tables[table]
    for i in range(widget.tabs.count()):
        tab = widget.tabs.widget(i)
        if tab is page or page in tab.findChildren(type(page)):
            widget.tabs.setCurrentIndex(i)
    z = viewer.dims.range[0]
    viewer.dims.set_point(0, z.start + 0.55 * (z.stop - z.start))  # a slice through both lungs
    for _ in range(30):
        app.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    viewer.close()
    image = Image.fromarray(shot).convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    image.quantize(colors=128).save(out, optimize=True)  # ~200 kB for the docs
    return list(widget.tables)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "density_bands"))
