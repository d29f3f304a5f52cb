"""Training loop for the chest X-ray classifier (single process or DDP).

A hand-written loop rather than Lightning Fabric: Fabric is not a dependency of medscan, and
what it would remove here is small (device placement, DDP wrapping, autocast), while the parts
that matter for this task (patient-disjoint data, leakage hashes in the checkpoint, requeue-safe
``resume=auto``, weights-only checkpoints, threshold choice on validation) are ours either way.
The loop is ~300 lines, uses only torch's own DDP/AMP/scheduler APIs, and runs the same under
``torchrun`` and ``submitit``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import data as xdata
from .metrics import choose_threshold
from .model import XrayNet, atomic_torch_save, build_model, read_checkpoint, tmp_beside

log = logging.getLogger("medscan.xray.train")
CHECKPOINT_FORMAT = "medscan-xray-1"


# ----------------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    """Process group facts (world size 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1


def setup_distributed(accelerator: str = "cpu") -> DistInfo:
    """Join the process group that torchrun or a Slurm/submitit launch describes.

    torchrun sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``; under Slurm (``SLURM_NTASKS`` > 1 and
    no ``WORLD_SIZE``) ``submitit.helpers.TorchDistributedEnvironment().export()`` sets them from
    the Slurm variables. Backend ``nccl`` on GPU, ``gloo`` on CPU.
    """
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        # set by submitit's own sbatch script; a plain `srun medscan train ...` lacks it, and
        # the Slurm variables submitit reads are the same either way
        os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if accelerator == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(
        rank=dist.get_rank(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=dist.get_world_size(),
    )


def _gather(obj: Any, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------------- helpers
def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code using the global RNG
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 - per-worker global RNG for third-party code
    random.seed(seed)


def pick_device(accelerator: str) -> torch.device:
    """``cpu``, ``gpu``/``cuda`` (error without one) or ``auto``."""
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.accelerator=gpu but torch sees no CUDA device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if accelerator == "auto" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to a temp file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    tmp = tmp_beside(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_history_csv(path: Path, history: list[dict]) -> None:
    """Per-epoch log as CSV (rewritten whole, atomically, so a resume keeps earlier rows)."""
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def _to_plain(obj: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj


# ----------------------------------------------------------------------------------- data
def prepare_data(cfg: Any, info: DistInfo) -> dict:
    """Scan, split by patient, hash, and log what the model will see.

    Returns a dict with ``train``, ``val`` (records), ``train_hashes``, ``val_hashes``,
    ``classes``.
    """
    d = cfg["data"]
    classes = list(d.get("classes") or xdata.CLASSES)
    root = Path(d.get("root") or xdata.SAMPLE_ROOT)
    regex = d.get("patient_regex")
    records = xdata.scan_folder(root, d.get("split"), classes=classes, patient_regex=regex)
    val_split = d.get("val_split")
    if val_split and (root / val_split).is_dir():
        train = records
        val = xdata.scan_folder(root, val_split, classes=classes, patient_regex=regex)
        source = f"{root / val_split}"
    else:
        train, val = xdata.patient_split(
            records, float(d.get("val_fraction", 0.15)), int(d.get("split_seed", 0))
        )
        source = f"patient-disjoint {float(d.get('val_fraction', 0.15)):.0%} of the training folder"
    for r in [*train, *val]:  # fail before training starts, naming the file
        xdata.probe_image(r.path)
    hashes = {r.path: xdata.content_hash(r.path) for r in [*train, *val]}
    train_hashes = {hashes[r.path] for r in train}
    dup = [r for r in val if hashes[r.path] in train_hashes]
    if dup:
        log.warning(
            "dropping %d validation images byte-identical to training images", len(dup)
        )
        val = [r for r in val if hashes[r.path] not in train_hashes]
    shared = xdata.shared_patients(train, val)
    if info.is_main:
        log.info("data root %s; validation: %s", root, source)
        log.info(
            "train: %d images, %d patients, %s",
            len(train),
            len({r.patient_id for r in train}),
            xdata.class_counts(train, classes),
        )
        log.info(
            "val:   %d images, %d patients, %s",
            len(val),
            len({r.patient_id for r in val}),
            xdata.class_counts(val, classes),
        )
        if shared:
            log.warning(
                "%d patient ids are in both train and val (%d val images)",
                len(shared),
                sum(shared.values()),
            )
    if not val:
        raise xdata.DatasetError("validation set is empty")
    return {
        "train": train,
        "val": val,
        "classes": classes,
        "train_hashes": sorted(train_hashes),
        "val_hashes": sorted({hashes[r.path] for r in val}),
        "shared_patients": shared,
    }


def _loader(ds, batch_size, shuffle, workers, seed, info: DistInfo, drop_last=False):
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = None
    if info.enabled and shuffle:
        sampler = DistributedSampler(
            ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
            drop_last=drop_last,
        )
    gen = torch.Generator()
    gen.manual_seed(seed + info.rank)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init,
        generator=gen,
        pin_memory=torch.cuda.is_available(),
    )


# ----------------------------------------------------------------------------------- eval step
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


# ----------------------------------------------------------------------------------- train
def _checkpoint_config(cfg: Any, classes: list[str], model: XrayNet) -> dict:
    d, m = cfg["data"], cfg["model"]
    return {
        "model_name": str(m["name"]),
        "image_size": int(d["image_size"]),
        "classes": list(classes),
        "mean": [float(v) for v in model.mean.flatten()],
        "std": [float(v) for v in model.std.flatten()],
        "resize": str(d.get("resize", "squash")),
        "jpeg_draft": bool(d.get("jpeg_draft", True)),
        "reencode_jpeg": d.get("reencode_jpeg"),
        "clahe": bool(d.get("clahe", False)),
        "input": "grey float32 (B, 1, S, S) in [0, 1]; output logits (B, 2)",
    }


def _scheduler(optimizer, cfg_t, steps_per_epoch: int, epochs: int):
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    total = max(1, steps_per_epoch * epochs)
    warm = min(total - 1, int(float(cfg_t.get("warmup_epochs", 0.0)) * steps_per_epoch))
    if cfg_t.get("scheduler", "cosine") == "constant":
        return LinearLR(optimizer, start_factor=1.0, end_factor=1.0, total_iters=1)
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=0.0)
    if warm <= 0:
        return cosine
    return SequentialLR(
        optimizer,
        [LinearLR(optimizer, start_factor=0.05, end_factor=1.0, total_iters=warm), cosine],
        milestones=[warm],
    )


def train(cfg: Any) -> dict:
    """Train per the config; returns a summary dict (rank 0 writes every file).

    Parameters
    ----------
    cfg : DictConfig or dict
        ``data``, ``model``, ``trainer``, ``seed``, ``output`` (see ``conf/train.yaml``).

    Returns
    -------
    dict
        ``best_epoch``, ``best_score`` (validation ROC-AUC), ``epochs_run``, ``stopped``
        (reason), ``threshold``, ``checkpoints``, ``history``.
    """
    cfg = _to_plain(cfg)
    if (cfg["model"].get("kind") or "cnn") == "probe":  # frozen features + logistic regression
        from .probe import train_probe

        return train_probe(cfg)
    t_cfg = cfg["trainer"]
    device = pick_device(str(t_cfg.get("accelerator", "auto")))
    info = setup_distributed(device.type)
    if info.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    threads = t_cfg.get("num_threads")
    if threads is None and device.type == "cpu" and info.world_size > 1:
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if threads:
        torch.set_num_threads(int(threads))
    seed = int(cfg.get("seed", 0))
    seed_everything(seed + info.rank, bool(t_cfg.get("deterministic", False)))
    out = Path(cfg["output"])
    if info.enabled:  # ${now:...} may differ between ranks: rank 0's folder wins
        box = [str(out)]
        torch.distributed.broadcast_object_list(box, src=0)
        out = Path(box[0])
    ckpt_dir = out / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"

    # resume
    resume = str(t_cfg.get("resume", "auto"))
    state = None
    if resume == "auto" and last_path.is_file():
        state = read_checkpoint(last_path)
    elif resume not in ("auto", "never", "none", "false", "False"):
        state = read_checkpoint(resume)
    if state is not None and state.get("finished"):
        if info.is_main:
            log.info("%s: training already finished (%s); nothing to do", last_path,
                     state.get("stopped"))
        return _summary(state, best_path, last_path)

    prepared = prepare_data(cfg, info)
    classes = prepared["classes"]
    d, m = cfg["data"], cfg["model"]
    size = int(d["image_size"])
    augment = xdata.make_augment(d.get("augment"))
    common = {"size": size, "resize": d.get("resize", "squash"),
              "jpeg_draft": bool(d.get("jpeg_draft", True)), "cache": bool(d.get("cache", False)),
              "reencode_jpeg": d.get("reencode_jpeg"), "clahe": bool(d.get("clahe", False))}
    train_ds = xdata.XrayDataset(prepared["train"], augment=augment, **common)
    val_ds = xdata.XrayDataset(prepared["val"], **common)
    batch = int(d.get("batch_size", 32))
    workers = int(d.get("num_workers", 2))
    train_loader = _loader(
        train_ds, batch, True, workers, seed, info, drop_last=len(train_ds) > batch
    )
    from torch.utils.data import Subset

    val_idx = list(range(len(val_ds)))[info.rank :: info.world_size]
    val_loader = _loader(Subset(val_ds, val_idx), batch, False, workers, seed, info)

    model = build_model(
        m["name"],
        num_classes=len(classes),
        pretrained=bool(m.get("pretrained", False)) and state is None,
        weights=m.get("weights"),
        drop_rate=float(m.get("drop_rate", 0.0)),
    ).to(device)
    if m.get("freeze"):
        frozen = model.freeze(list(m["freeze"]))
        if info.is_main:
            log.info("frozen (no gradient, BN in eval mode): %s", frozen)
    if t_cfg.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    if state is not None:
        if state["config"]["model_name"] != m["name"]:
            raise ValueError(
                f"{last_path}: checkpoint is {state['config']['model_name']}, config asks for "
                f"{m['name']}; use another output folder or trainer.resume=never"
            )
        model.load_state_dict(state["model_state"])
    ddp_model: nn.Module = model
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    counts = np.bincount([r.label for r in prepared["train"]], minlength=len(classes))
    weight = None
    if t_cfg.get("class_weights", "balanced") == "balanced":
        weight = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)),
                              dtype=torch.float32)
        if info.is_main:
            log.info("class weights (balanced): %s", [round(float(w), 3) for w in weight])
    loss_fn = nn.CrossEntropyLoss(
        weight=None if weight is None else weight.to(device),
        label_smoothing=float(t_cfg.get("label_smoothing", 0.0)),
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=float(t_cfg.get("lr", 3e-4)),
        weight_decay=float(t_cfg.get("weight_decay", 0.05)),
    )
    max_epochs = int(t_cfg.get("max_epochs", 10))
    steps_cap = t_cfg.get("max_steps_per_epoch")
    steps_per_epoch = len(train_loader) if not steps_cap else min(len(train_loader), int(steps_cap))
    scheduler = _scheduler(optimizer, t_cfg, steps_per_epoch, max_epochs)
    precision = str(t_cfg.get("precision", "auto"))
    amp_dtype = None
    if device.type == "cuda" and precision in ("auto", "16-mixed", "bf16-mixed"):
        bf16 = precision == "bf16-mixed" or (precision == "auto" and torch.cuda.is_bf16_supported())
        amp_dtype = torch.bfloat16 if bf16 else torch.float16
    elif device.type == "cpu" and precision == "bf16-mixed":
        amp_dtype = torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, global_step = 0, 0
    best_score, best_epoch, bad_epochs = -math.inf, -1, 0
    history: list[dict] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        if state.get("scaler_state"):
            scaler.load_state_dict(state["scaler_state"])
        start_epoch = int(state["epoch"]) + 1
        global_step = int(state.get("global_step", 0))
        best_score = float(state.get("best_score", -math.inf))
        best_epoch = int(state.get("best_epoch", -1))
        bad_epochs = int(state.get("bad_epochs", 0))
        history = list(state.get("history", []))
        if info.is_main:
            log.info("resumed from %s at epoch %d", last_path, start_epoch)

    ckpt_cfg = _checkpoint_config(cfg, classes, model)
    patience = t_cfg.get("early_stopping_patience", 3)
    min_delta = float(t_cfg.get("min_delta", 0.0))
    max_minutes = t_cfg.get("max_minutes")
    log_every = int(t_cfg.get("log_every_n_steps", 20))
    t_start = time.perf_counter()
    stopped = "max_epochs"
    threshold_method = str(t_cfg.get("threshold_method", "youden"))
    target_sens = float(t_cfg.get("target_sensitivity", 0.95))

    for epoch in range(start_epoch, max_epochs):
        ddp_model.train()
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum, n_seen, out_of_time = 0.0, 0, False
        for step, (x, y) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(ddp_model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            loss_sum += float(loss.detach()) * len(y)
            n_seen += len(y)
            if info.is_main and log_every and (step + 1) % log_every == 0:
                log.info("epoch %d step %d/%d loss %.4f (%.1f img/s per process)", epoch,
                         step + 1, steps_per_epoch, loss_sum / n_seen,
                         n_seen / (time.perf_counter() - t0))
            if max_minutes and (time.perf_counter() - t_start) / 60 > float(max_minutes):
                out_of_time = True
                break
        if info.enabled:  # every rank must agree on leaving early
            flag = torch.tensor([int(out_of_time)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        train_seconds = time.perf_counter() - t0
        totals = _gather((loss_sum, n_seen), info)
        train_loss = sum(t[0] for t in totals) / max(1, sum(t[1] for t in totals))
        images = sum(t[1] for t in totals)

        probs, labels, _ = predict_probs(model, val_loader, device, amp_dtype)
        gathered = _gather((val_idx, probs.tolist(), labels.tolist()), info)
        p_all = np.zeros(len(val_ds))
        y_all = np.zeros(len(val_ds), dtype=int)
        for idx, pr, lb in gathered:
            p_all[idx], y_all[idx] = pr, lb
        row = _epoch_metrics(y_all, p_all, threshold_method, target_sens)
        row = {"epoch": epoch, "train_loss": round(train_loss, 6), **row,
               "lr": optimizer.param_groups[0]["lr"], "train_images": images,
               "train_seconds": round(train_seconds, 2),
               "train_images_per_s": round(images / max(train_seconds, 1e-9), 2)}
        history.append(row)
        score = row["val_roc_auc"]
        improved = np.isfinite(score) and score > best_score + min_delta
        if improved:
            best_score, best_epoch, bad_epochs = float(score), epoch, 0
        else:
            bad_epochs += 1
        finished = False
        if out_of_time:
            stopped, finished = f"time budget of {max_minutes} min", True
        elif epoch + 1 >= max_epochs:
            stopped, finished = "max_epochs", True
        elif patience and bad_epochs >= int(patience):
            stopped, finished = f"early stopping (no val ROC-AUC gain for {patience} epochs)", True
        if info.is_main:
            log.info(
                "epoch %d: train_loss %.4f val_loss %.4f val_roc_auc %.4f val_acc %.4f "
                "(threshold %.3f) %.1f img/s%s",
                epoch, train_loss, row["val_loss"], score, row["val_accuracy"],
                row["threshold"], row["train_images_per_s"], " *best*" if improved else "",
            )
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "model_state": {
                    k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                },
                "config": ckpt_cfg,
                "threshold": row["threshold"],
                "threshold_method": threshold_method,
                "epoch": epoch,
                "global_step": global_step,
                "val_metrics": {k: v for k, v in row.items() if k.startswith("val_")},
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "scaler_state": scaler.state_dict(),
                "best_score": best_score,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "history": history,
                "finished": finished,
                "stopped": stopped if finished else None,
                "train_hashes": prepared["train_hashes"],
                "val_hashes": prepared["val_hashes"],
                "train_patients": sorted({r.patient_id for r in prepared["train"]}),
                "train_config": json.dumps(cfg, default=str),
            }
            if improved:
                atomic_torch_save({**ckpt, "optimizer_state": {}, "scheduler_state": {}}, best_path)
            atomic_torch_save(ckpt, last_path)
            write_history_csv(out / "metrics.csv", history)
        if info.enabled:
            torch.distributed.barrier()
        if finished:
            break
    summary = {
        "best_epoch": best_epoch,
        "best_score": best_score,
        "epochs_run": len(history),
        "stopped": stopped,
        "checkpoints": {"best": str(best_path), "last": str(last_path)},
        "history": history,
        "seconds": round(time.perf_counter() - t_start, 1),
        "world_size": info.world_size,
        "rank": info.rank,
    }
    if info.is_main:
        summary["threshold"] = read_checkpoint(best_path).get("threshold")
        atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
        log.info("done: %s; best epoch %d val ROC-AUC %.4f -> %s", stopped, best_epoch,
                 best_score, best_path)
    return summary


def _epoch_metrics(y: np.ndarray, p: np.ndarray, method: str, target: float) -> dict:
    from sklearn.metrics import roc_auc_score

    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    val_loss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    if len(np.unique(y)) < 2:
        raise xdata.DatasetError("validation set holds one class only: no ROC-AUC or threshold")
    thr = choose_threshold(y, p, method, target)
    pred = p >= thr
    sens = float(pred[y == 1].mean())
    spec = float((~pred[y == 0]).mean())
    return {
        "val_loss": round(val_loss, 6),
        "val_roc_auc": float(roc_auc_score(y, p)),
        "val_accuracy": float((pred == y).mean()),
        "val_sensitivity": sens,
        "val_specificity": spec,
        "val_accuracy_at_0.5": float(((p >= 0.5) == y).mean()),
        "threshold": thr,
    }


def _summary(state: dict, best_path: Path, last_path: Path) -> dict:
    return {
        "best_epoch": state.get("best_epoch"),
        "best_score": state.get("best_score"),
        "epochs_run": len(state.get("history", [])),
        "stopped": state.get("stopped"),
        "checkpoints": {"best": str(best_path), "last": str(last_path)},
        "history": state.get("history", []),
        "threshold": state.get("threshold"),
        "already_finished": True,
    }
