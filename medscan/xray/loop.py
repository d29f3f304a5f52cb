"""One epoch of training and one pass of validation (plain torch: DDP, AMP, schedulers).

A hand-written loop rather than Lightning Fabric: what Fabric would take over here (device
placement, the DDP wrapper, autocast and the gradient scaler) is about thirty lines of torch
API below, while the rest of a run (patient-disjoint data, hashes and threshold in the
checkpoint, requeue-safe resume, weights-only checkpoints) is ours either way; Fabric would add
the ``lightning`` dependency for that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medscan.hpc import DistEnv

from . import data as xdata
from .checkpoint import Checkpoint
from .distributed import any_rank, gather
from .metrics import choose_threshold
from .train_log import log_step


@dataclass
class Optimisation:
    """Everything one optimiser step touches.

    Attributes
    ----------
    model : nn.Module
        The network (what is saved).
    ddp_model : nn.Module
        ``model`` or its ``DistributedDataParallel`` wrapper (what is trained).
    loss_fn, optimizer, scheduler, scaler
        Weighted cross-entropy, AdamW, per-step LR schedule, ``GradScaler`` (fp16 only).
    device : torch.device
    amp_dtype : torch.dtype or None
        Autocast dtype (``None``: full precision).
    """

    model: nn.Module
    ddp_model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None

    def load_state(self, ckpt: Checkpoint) -> None:
        """Optimizer, scheduler and scaler states of a checkpoint (resume)."""
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.scheduler.load_state_dict(ckpt.scheduler_state)
        if ckpt.scaler_state:
            self.scaler.load_state_dict(ckpt.scaler_state)

    def store_state(self, ckpt: Checkpoint) -> None:
        """Put the model (CPU copy) and the optimiser states into ``ckpt``."""
        ckpt.model_state = {
            k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
        }
        ckpt.optimizer_state = self.optimizer.state_dict()
        ckpt.scheduler_state = self.scheduler.state_dict()
        ckpt.scaler_state = self.scaler.state_dict()


def make_scheduler(optimizer, t_cfg: dict[str, Any], steps_per_epoch: int, epochs: int):
    """Per-step cosine decay after ``trainer.warmup_epochs`` of linear warm-up, or constant."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    total = max(1, steps_per_epoch * epochs)
    warm = min(total - 1, int(float(t_cfg.get("warmup_epochs", 0.0)) * steps_per_epoch))
    if t_cfg.get("scheduler", "cosine") == "constant":
        return LinearLR(optimizer, start_factor=1.0, end_factor=1.0, total_iters=1)
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=0.0)
    if warm <= 0:
        return cosine
    return SequentialLR(
        optimizer,
        [LinearLR(optimizer, start_factor=0.05, end_factor=1.0, total_iters=warm), cosine],
        milestones=[warm],
    )


def amp_dtype_for(device: torch.device, precision: str) -> torch.dtype | None:
    """``trainer.precision`` -> autocast dtype: bf16 (or fp16) on GPU, bf16 on CPU on request."""
    if device.type == "cuda" and precision in ("auto", "16-mixed", "bf16-mixed"):
        bf16 = precision == "bf16-mixed" or (precision == "auto" and torch.cuda.is_bf16_supported())
        return torch.bfloat16 if bf16 else torch.float16
    if device.type == "cpu" and precision == "bf16-mixed":
        return torch.bfloat16
    return None


def build_optimisation(model: nn.Module, t_cfg: dict[str, Any], class_counts: np.ndarray,
                       steps_per_epoch: int, device: torch.device, env: DistEnv) -> Optimisation:
    """DDP wrapper, class-weighted loss, AdamW on the trainable parameters, schedule, scaler."""
    ddp_model: nn.Module = model
    if env.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    weight = None
    if t_cfg.get("class_weights", "balanced") == "balanced":
        n = len(class_counts)
        weight = torch.tensor(class_counts.sum() / (n * np.maximum(class_counts, 1)),
                              dtype=torch.float32)
        if env.is_main:
            from .train_log import log

            log.info("class weights (balanced): %s", [round(float(w), 3) for w in weight])
    loss_fn = nn.CrossEntropyLoss(
        weight=None if weight is None else weight.to(device),
        label_smoothing=float(t_cfg.get("label_smoothing", 0.0)),
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=float(t_cfg.get("lr", 3e-4)),
        weight_decay=float(t_cfg.get("weight_decay", 0.05)),
    )
    scheduler = make_scheduler(optimizer, t_cfg, steps_per_epoch, int(t_cfg.get("max_epochs", 10)))
    amp_dtype = amp_dtype_for(device, str(t_cfg.get("precision", "auto")))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return Optimisation(model, ddp_model, loss_fn, optimizer, scheduler, scaler, device,
                        amp_dtype)


@dataclass
class EpochStats:
    """Training side of one epoch, summed over ranks."""

    loss: float
    images: int
    seconds: float
    steps: int
    out_of_time: bool


def train_epoch(opt: Optimisation, loader, epoch: int, steps_per_epoch: int, env: DistEnv,
                *, deadline: float | None = None, log_every: int = 0) -> EpochStats:
    """Up to ``steps_per_epoch`` optimiser steps; stops early at ``deadline`` (perf_counter s).

    Every rank agrees on stopping early; loss and image counts are gathered over ranks.
    """
    opt.ddp_model.train()
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    device, amp = opt.device, opt.amp_dtype
    t0 = time.perf_counter()
    loss_sum, n_seen, steps, out_of_time = 0.0, 0, 0, False
    for step, (x, y) in enumerate(loader):
        if step >= steps_per_epoch:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = opt.loss_fn(opt.ddp_model(x).float(), y)
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss).backward()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        steps += 1
        loss_sum += float(loss.detach()) * len(y)
        n_seen += len(y)
        if env.is_main and log_every and (step + 1) % log_every == 0:
            log_step(epoch, step + 1, steps_per_epoch, loss_sum / n_seen,
                     n_seen / (time.perf_counter() - t0))
        if deadline is not None and time.perf_counter() > deadline:
            out_of_time = True
            break
    out_of_time = any_rank(out_of_time, env)
    seconds = time.perf_counter() - t0
    totals = gather((loss_sum, n_seen), env)
    images = sum(t[1] for t in totals)
    return EpochStats(sum(t[0] for t in totals) / max(1, images), images, seconds, steps,
                      out_of_time)


@torch.no_grad()
def predict_probs(
    model: nn.Module, loader, device: torch.device, amp_dtype=None
) -> tuple[np.ndarray, np.ndarray, float]:
    """P(PNEUMONIA), labels and mean CE loss over a loader (labels -1 ignored in the loss)."""
    model.eval()
    probs, labels, losses = [], [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        logits = logits.float().cpu()
        probs.append(torch.softmax(logits, 1)[:, 1].numpy())
        labels.append(y.numpy())
        valid = y >= 0
        if valid.any():
            losses.append(
                nn.functional.cross_entropy(logits[valid], y[valid], reduction="sum").item()
            )
    p = np.concatenate(probs) if probs else np.zeros(0)
    lab = np.concatenate(labels) if labels else np.zeros(0, dtype=int)
    n_valid = max(1, int((lab >= 0).sum()))
    return p, lab, float(sum(losses) / n_valid)


def validate(opt: Optimisation, loaders, env: DistEnv) -> tuple[np.ndarray, np.ndarray]:
    """P(PNEUMONIA) and labels of the whole validation set (each rank's shard, gathered).

    ``loaders`` is a :class:`.trainset.Loaders`.
    """
    probs, labels, _ = predict_probs(opt.model, loaders.val, opt.device, opt.amp_dtype)
    p_all = np.zeros(loaders.n_val)
    y_all = np.zeros(loaders.n_val, dtype=int)
    for idx, pr, lb in gather((loaders.val_index, probs.tolist(), labels.tolist()), env):
        p_all[idx], y_all[idx] = pr, lb
    return p_all, y_all


def epoch_metrics(y: np.ndarray, p: np.ndarray, method: str, target: float) -> dict[str, Any]:
    """Validation loss, ROC-AUC and accuracy/sensitivity/specificity at the chosen threshold.

    Raises
    ------
    DatasetError
        The validation set holds one class only.
    """
    from sklearn.metrics import roc_auc_score

    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    val_loss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    if len(np.unique(y)) < 2:
        raise xdata.DatasetError("validation set holds one class only: no ROC-AUC or threshold")
    thr = choose_threshold(y, p, method, target)
    pred = p >= thr
    return {
        "val_loss": round(val_loss, 6),
        "val_roc_auc": float(roc_auc_score(y, p)),
        "val_accuracy": float((pred == y).mean()),
        "val_sensitivity": float(pred[y == 1].mean()),
        "val_specificity": float((~pred[y == 0]).mean()),
        "val_accuracy_at_0.5": float(((p >= 0.5) == y).mean()),
        "threshold": thr,
    }
