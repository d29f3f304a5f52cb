"""Grad-CAM saliency for the X-ray classifier (the ``grad-cam`` package, offline)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data as xdata
from .model import tmp_beside


def find_target_layer(model: nn.Module, image_size: int = 64) -> nn.Module:
    """The last top-level backbone block whose output is a spatial (4-D, > 1x1) feature map.

    Works for the timm families medscan ships configs for (ResNet ``layer4``, EfficientNet /
    MobileNet ``blocks``/``bn2``, ConvNeXt ``stages``, DenseNet ``features``) without a table.
    """
    backbone = getattr(model, "backbone", model)
    found: list[nn.Module] = []
    hooks = []
    for child in backbone.children():

        def hook(mod, _inp, out, child=child):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[-2:]) > 1:
                found.append(mod)

        hooks.append(child.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise ValueError("no spatial feature layer found for Grad-CAM")
    return found[-1]


def gradcam(
    model: nn.Module, info: dict, path: str | Path, target_class: int = 1
) -> tuple[np.ndarray, float]:
    """Grad-CAM overlay for one image file.

    Parameters
    ----------
    model : XrayNet
    info : dict
        Checkpoint info (image size, resize mode).
    path : path
        Image file.
    target_class : int
        Class whose evidence is shown (1 = PNEUMONIA).

    Returns
    -------
    overlay : ndarray, uint8, (S, S, 3)
        The preprocessed image with the heat map blended in (RGB).
    prob : float
        P(PNEUMONIA) of the image.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    size = int(info["image_size"])
    img = xdata.load_image(path, size, info.get("resize", "squash"),
                           bool(info.get("jpeg_draft", True)))
    x = torch.from_numpy(img)[None, None]
    model.eval()
    with torch.no_grad():
        prob = float(torch.softmax(model(x), 1)[0, 1])
    layer = find_target_layer(model, size)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(target_class)])[0]
    rgb = np.repeat(img[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, heat, use_rgb=True), prob


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 array as PNG atomically."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_beside(path)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
