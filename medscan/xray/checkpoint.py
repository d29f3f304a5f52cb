"""The X-ray checkpoint: a typed :class:`Checkpoint`, stored as a plain ``torch.save`` dict.

On disk a checkpoint stays what it always was (format ``medscan-xray-1``): a dict of tensors,
numbers, strings, lists and dicts that ``torch.load(path, weights_only=True)`` reads without
medscan. In memory it is a dataclass, so the training loop, the probe, inference and evaluation
name the same fields. Checkpoints written before the dataclass (the probe's lacked the
optimizer, scheduler and scaler states) load with those fields at their defaults; keys this
version does not know are kept in :attr:`Checkpoint.extra` and written back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from medscan.io.atomic import atomic_write

#: ``format`` of the checkpoints this module writes.
FORMAT = "medscan-xray-1"


@dataclass
class Checkpoint:
    """One training state of the X-ray classifier (``best.pt`` / ``last.pt``).

    Attributes
    ----------
    model_state : dict of str to Tensor
        The network's state dict (CPU, contiguous).
    config : dict
        What inference needs to rebuild the network and its input: ``model_name``,
        ``image_size``, ``classes``, ``mean``, ``std``, ``resize``, ``jpeg_draft``,
        ``reencode_jpeg``, ``clahe``, ``input`` (and ``kind``/``backbones``/``C`` for a probe).
    threshold : float or None
        Decision threshold on P(PNEUMONIA), chosen on validation.
    threshold_method : str or None
        ``youden`` or ``sensitivity``.
    epoch, global_step : int
        Last finished epoch (0-based) and optimiser steps so far.
    val_metrics : dict
        The ``val_*`` values of that epoch.
    optimizer_state, scheduler_state, scaler_state : dict
        For resuming (empty in ``best.pt`` and in a probe).
    best_score, best_epoch, bad_epochs : float, int, int
        Best validation ROC-AUC so far, its epoch, epochs since it (early stopping).
    history : list of dict
        One row per epoch (the rows of ``metrics.csv``).
    finished : bool
        True when training ended (``stopped`` says why); a requeued run then does nothing.
    train_hashes, val_hashes : list of str
        SHA-256 of every training / validation image (leakage guard of ``evaluate``).
    train_patients : list of str
        Patient ids of the training images.
    train_config : str
        The composed job config as JSON.
    format : str
        :data:`FORMAT`.
    extra : dict
        Keys of a stored checkpoint that are not fields here (kept and written back).
    """

    model_state: dict[str, torch.Tensor]
    config: dict[str, Any]
    threshold: float | None = None
    threshold_method: str | None = None
    epoch: int = 0
    global_step: int = 0
    val_metrics: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    scheduler_state: dict[str, Any] = field(default_factory=dict)
    scaler_state: dict[str, Any] = field(default_factory=dict)
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    stopped: str | None = None
    train_hashes: list[str] = field(default_factory=list)
    val_hashes: list[str] = field(default_factory=list)
    train_patients: list[str] = field(default_factory=list)
    train_config: str = "{}"
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: a flat dict (``format`` first, then the fields, then ``extra``)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {"format": data.pop("format"), **data, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "checkpoint") -> Checkpoint:
        """A checkpoint from its stored dict (missing optional keys take their defaults).

        Raises
        ------
        ValueError
            No ``model_state`` or ``config`` (not a medscan X-ray checkpoint), naming ``source``.
        """
        if not isinstance(data, dict) or "model_state" not in data or "config" not in data:
            raise ValueError(f"{source}: not a medscan X-ray checkpoint (no model_state/config)")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def save(self, path: str | Path) -> Path:
        """``torch.save`` the stored dict atomically (temp file beside ``path``, then rename)."""
        data = self.to_dict()
        return atomic_write(path, lambda tmp: torch.save(data, tmp))

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint file (CPU, ``weights_only=True``); see :func:`read_checkpoint`."""
        return cls.from_dict(read_checkpoint(path), path)

    def for_inference(self) -> Checkpoint:
        """A copy without the optimiser and scheduler states (what ``best.pt`` stores)."""
        return replace(self, optimizer_state={}, scheduler_state={})


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The stored dict of a checkpoint: ``torch.load(path, weights_only=True)`` on CPU.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A file torch cannot load as a weights-only checkpoint, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable medscan checkpoint ({exc})") from exc
