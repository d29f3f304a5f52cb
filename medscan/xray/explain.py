"""Grad-CAM saliency for the X-ray classifier (the ``grad-cam`` package, offline).

:func:`gradcam` gives the map on the model input (``S x S``); :func:`gradcam_figure` puts it
back on the original film at the film's own size and aspect ratio (the inverse of
:func:`medscan.xray.data.preprocess`) with the probability, threshold and call printed
under it: what ``medscan predict gradcam=true`` writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from medscan.io.atomic import atomic_write

from . import data as xdata


def find_target_layer(model: nn.Module, image_size: int = 64) -> nn.Module:
    """The last top-level backbone block whose output is a spatial (4-D, > 1x1) feature map.

    Works for the timm families medscan ships configs for (ResNet ``layer4``, EfficientNet /
    MobileNet ``blocks``/``bn2``, ConvNeXt ``stages``, DenseNet ``features``) without a table.
    """
    if hasattr(model, "cam_layer"):  # e.g. the frozen-feature probe names its own layer
        return model.cam_layer()
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


def gradcam_map(
    model: nn.Module, info: dict, path: str | Path, target_class: int = 1
) -> tuple[np.ndarray, np.ndarray, float]:
    """Grad-CAM map of one image file on the model input.

    Returns
    -------
    heat : ndarray, float32, (S, S)
        Grad-CAM in [0, 1] (``grad-cam``'s normalisation) for ``target_class``.
    image : ndarray, float32, (S, S)
        The model input (:func:`medscan.xray.data.load_for_model`).
    prob : float
        P(PNEUMONIA) of the image.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    size = int(info["image_size"])
    img = xdata.load_for_model(path, info)
    x = torch.from_numpy(img)[None, None]
    model.eval()
    with torch.no_grad():
        prob = float(torch.softmax(model(x), 1)[0, 1])
    layer = find_target_layer(model, size)
    # a frozen network (the probe) has no parameter that needs a gradient: the input must,
    # or the target layer's activations carry no graph to back-propagate through
    x = x.clone().requires_grad_(True)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(target_class)])[0]
    return np.asarray(heat, dtype=np.float32), img, prob


def gradcam(
    model: nn.Module, info: dict, path: str | Path, target_class: int = 1
) -> tuple[np.ndarray, float]:
    """Grad-CAM overlay for one image file, on the model input.

    Parameters
    ----------
    model : XrayNet or ProbeNet
    info : dict
        Checkpoint info (image size, resize mode, input path options).
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
    from pytorch_grad_cam.utils.image import show_cam_on_image

    heat, img, prob = gradcam_map(model, info, path, target_class)
    rgb = np.repeat(img[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, heat, use_rgb=True), prob


def map_to_original(heat: np.ndarray, shape: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """Put a model-input map back on the original image: the inverse of ``preprocess``.

    Parameters
    ----------
    heat : ndarray, float, (S, S)
        A map on the model input.
    shape : (int, int)
        ``(H, W)`` of the original image.
    resize : {"squash", "pad"}
        How :func:`medscan.xray.data.preprocess` made the input: ``squash`` is undone by
        resizing the whole map to ``(H, W)``; ``pad`` by cropping the letterbox's image area
        (:func:`medscan.xray.data.letterbox_box`) first.

    Returns
    -------
    ndarray, float32, (H, W)
        Bilinear (Pillow) resampling, clipped to the map's value range.
    """
    from PIL import Image

    h, w = shape
    size = heat.shape[0]
    if resize == "pad":
        y0, x0, nh, nw = xdata.letterbox_box(h, w, size)
        heat = heat[y0 : y0 + nh, x0 : x0 + nw]
    elif resize != "squash":
        raise ValueError(f"resize must be 'squash' or 'pad', not {resize!r}")
    img = Image.fromarray(np.ascontiguousarray(heat, dtype=np.float32), mode="F")
    out = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, float(heat.min()), float(heat.max()))


def caption_height(width: int) -> int:
    """Height in pixels of the two-line caption strip under a film ``width`` pixels wide."""
    return max(40, round(0.08 * width))


def gradcam_on_film(
    model: nn.Module, info: dict, path: str | Path, target_class: int = 1
) -> tuple[np.ndarray, float]:
    """Grad-CAM blended into the original film at its own size (no caption).

    Returns
    -------
    overlay : ndarray, uint8, (H, W, 3)
        The film (:func:`~medscan.xray.data.read_image`, full decode) with the map of
        :func:`gradcam_map` put back through :func:`map_to_original`.
    prob : float
        P(PNEUMONIA).
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    heat, _, prob = gradcam_map(model, info, path, target_class)
    film = xdata.read_image(path)
    big = map_to_original(heat, film.shape, info.get("resize", "squash"))
    rgb = np.repeat(film[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, big, use_rgb=True, image_weight=0.6), prob


def gradcam_figure(
    model: nn.Module,
    info: dict,
    path: str | Path,
    threshold: float,
    target_class: int = 1,
) -> tuple[np.ndarray, float]:
    """Grad-CAM on the original film, at its own size, with the numbers printed under it.

    Parameters
    ----------
    model, info, path, target_class
        As for :func:`gradcam`.
    threshold : float
        Decision threshold on P(PNEUMONIA) (printed, and decides the printed call).

    Returns
    -------
    figure : ndarray, uint8, (H + caption_height(W), W, 3)
        Rows ``0..H-1``: the original image (full decode, :func:`~medscan.xray.data.read_image`)
        with the Grad-CAM map blended in (``grad-cam``'s jet overlay); below it a black strip
        with "P(PNEUMONIA) = p -> CLASS" and "threshold t" (font fitted to the width).
    prob : float
        P(PNEUMONIA).
    """
    from PIL import Image, ImageDraw, ImageFont

    overlay, prob = gradcam_on_film(model, info, path, target_class)
    h, w = overlay.shape[:2]
    strip = caption_height(w)
    canvas = Image.new("RGB", (w, h + strip), (0, 0, 0))
    canvas.paste(Image.fromarray(overlay), (0, 0))
    classes = list(info.get("classes", xdata.CLASSES))
    call = classes[1] if prob >= threshold else classes[0]
    lines = [f"P({classes[1]}) = {prob:.3f}  ->  {call}",
             f"threshold {threshold:.3f}; Grad-CAM of {classes[target_class]}"]
    draw = ImageDraw.Draw(canvas)
    size = max(6, int(strip * 0.4))
    font = ImageFont.load_default(size=size)
    while size > 6 and max(draw.textlength(t, font=font) for t in lines) > 0.96 * w:
        size -= 1
        font = ImageFont.load_default(size=size)
    for i, text in enumerate(lines):
        draw.text((max(2, round(0.02 * w)), h + round(strip * (0.06 + 0.47 * i))), text,
                  fill=(255, 255, 255), font=font)
    return np.asarray(canvas), prob


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 array as PNG atomically."""
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
