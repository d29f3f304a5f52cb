"""Chest X-ray PNEUMONIA/NORMAL classifier (timm): data, training, evaluation, export, Grad-CAM.

Public API for other areas (napari widget, notebooks)::

    from medscan.xray import load_checkpoint, predict_images, gradcam
    model, info = load_checkpoint("out/checkpoints/best.pt")
    rows = predict_images(model, info, ["a.jpeg", "b.dcm"])   # list of dicts
    overlay = gradcam(model, info, "a.jpeg")                  # (S, S, 3) uint8 RGB

torch/timm are imported on first use, so ``import medscan.xray`` is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["gradcam", "load_checkpoint", "predict_images"]


def load_checkpoint(path):
    """Load ``best.pt``/``last.pt`` -> ``(model, info)``; see :func:`.model.load_checkpoint`."""
    from .model import load_checkpoint as _load

    return _load(path)


def predict_images(model, info, paths, **kwargs: Any) -> list[dict]:
    """Probabilities for image files (list of dicts); see :func:`.infer.predict_images`."""
    from .infer import predict_images as _predict

    return _predict(model, info, paths, **kwargs)


def gradcam(model, info, path, target_class: int = 1):
    """Grad-CAM overlay ``(S, S, 3)`` uint8 RGB for one file; see :func:`.explain.gradcam`."""
    from .explain import gradcam as _gradcam

    return _gradcam(model, info, path, target_class)[0]
