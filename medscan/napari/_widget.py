"""napari widgets: CT window presets and CT segmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medscan.napari.layers import WINDOW_PRESETS

if TYPE_CHECKING:
    import napari


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
