"""``medscan train``: the chest X-ray classifier's training run (single process or DDP).

The run in order, one module per concern:

1. :func:`.distributed.setup_distributed` -- device and process group (torchrun, Slurm);
2. :func:`.trainset.prepare_data` / :func:`.trainset.make_loaders` -- patient-disjoint records,
   content hashes, loaders;
3. :func:`.loop.build_optimisation` -- model on its device, DDP, loss, AdamW, schedule, AMP;
4. per epoch :func:`.loop.train_epoch`, :func:`.loop.validate`, :func:`.loop.epoch_metrics`,
   then rank 0 saves :class:`.checkpoint.Checkpoint` ``last.pt`` (and ``best.pt``) and logs
   with :mod:`.train_log`.

The :class:`.checkpoint.Checkpoint` is the state of the run: resuming (``trainer.resume=auto``)
loads ``last.pt`` and carries on from its epoch, counters and history.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medscan.hpc import DistEnv

from .checkpoint import Checkpoint
from .distributed import barrier, from_main, set_cpu_threads, setup_distributed
from .loop import Optimisation, build_optimisation, epoch_metrics, train_epoch, validate
from .model import XrayNet, build_model
from .train_log import log, log_epoch, run_paths, summary_of, write_history_csv, write_summary
from .trainset import TrainingData, make_loaders, prepare_data, seed_everything

_NO_RESUME = ("auto", "never", "none", "false", "False")


def _to_plain(obj: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def resume_from(resume: str, last: Path) -> Checkpoint | None:
    """``trainer.resume``: ``auto`` (``last`` when it exists), ``never``, or a checkpoint path."""
    if resume == "auto":
        return Checkpoint.load(last) if last.is_file() else None
    if resume in _NO_RESUME:
        return None
    return Checkpoint.load(resume)


def checkpoint_config(cfg: dict[str, Any], classes: list[str], model: XrayNet) -> dict[str, Any]:
    """What inference needs to rebuild the network and its input (``Checkpoint.config``)."""
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


def new_checkpoint(cfg: dict[str, Any], data: TrainingData, config: dict[str, Any],
                   threshold_method: str) -> Checkpoint:
    """The state of a run before its first epoch (no weights yet)."""
    return Checkpoint(
        model_state={}, config=config, threshold_method=threshold_method, epoch=-1,
        train_hashes=data.train_hashes, val_hashes=data.val_hashes,
        train_patients=data.train_patients, train_config=json.dumps(cfg, default=str),
    )


def _model(cfg: dict[str, Any], classes: list[str], device: torch.device,
           resumed: Checkpoint | None, last: Path, env: DistEnv) -> XrayNet:
    m, t_cfg = cfg["model"], cfg["trainer"]
    model = build_model(
        m["name"], num_classes=len(classes),
        pretrained=bool(m.get("pretrained", False)) and resumed is None,
        weights=m.get("weights"), drop_rate=float(m.get("drop_rate", 0.0)),
    ).to(device)
    if m.get("freeze"):
        frozen = model.freeze(list(m["freeze"]))
        if env.is_main:
            log.info("frozen (no gradient, BN in eval mode): %s", frozen)
    if t_cfg.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    if resumed is not None:
        if resumed.config["model_name"] != m["name"]:
            raise ValueError(
                f"{last}: checkpoint is {resumed.config['model_name']}, config asks for "
                f"{m['name']}; use another output folder or trainer.resume=never"
            )
        model.load_state_dict(resumed.model_state)
    return model


def stop_reason(t_cfg: dict[str, Any], epoch: int, bad_epochs: int,
                out_of_time: bool) -> str | None:
    """Why training ends after ``epoch`` (time budget, last epoch, early stopping), or None."""
    patience = t_cfg.get("early_stopping_patience", 3)
    if out_of_time:
        return f"time budget of {t_cfg.get('max_minutes')} min"
    if epoch + 1 >= int(t_cfg.get("max_epochs", 10)):
        return "max_epochs"
    if patience and bad_epochs >= int(patience):
        return f"early stopping (no val ROC-AUC gain for {patience} epochs)"
    return None


def record_epoch(ckpt: Checkpoint, row: dict[str, Any], min_delta: float) -> bool:
    """Add an epoch's row to the run state; True when validation ROC-AUC improved."""
    ckpt.history.append(row)
    ckpt.epoch = row["epoch"]
    ckpt.threshold = row["threshold"]
    ckpt.val_metrics = {k: v for k, v in row.items() if k.startswith("val_")}
    score = row["val_roc_auc"]
    improved = bool(np.isfinite(score) and score > ckpt.best_score + min_delta)
    if improved:
        ckpt.best_score, ckpt.best_epoch, ckpt.bad_epochs = float(score), row["epoch"], 0
    else:
        ckpt.bad_epochs += 1
    return improved


def train(cfg: Any) -> dict[str, Any]:
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
    device, env = setup_distributed(str(t_cfg.get("accelerator", "auto")))
    set_cpu_threads(t_cfg.get("num_threads"), device, env)
    seed = int(cfg.get("seed", 0))
    seed_everything(seed + env.rank, bool(t_cfg.get("deterministic", False)))
    out = Path(from_main(str(cfg["output"]), env))  # ${now:...} may differ: rank 0's wins
    paths = run_paths(out)
    names = {"best": str(paths["best"]), "last": str(paths["last"])}

    resumed = resume_from(str(t_cfg.get("resume", "auto")), paths["last"])
    if resumed is not None and resumed.finished:
        if env.is_main:
            log.info("%s: training already finished (%s); nothing to do", paths["last"],
                     resumed.stopped)
        return summary_of(resumed, names, threshold=resumed.threshold, already_finished=True)

    data = prepare_data(cfg, env)
    loaders = make_loaders(cfg, data, seed, env)
    model = _model(cfg, data.classes, device, resumed, paths["last"], env)
    steps_cap = t_cfg.get("max_steps_per_epoch")
    steps_per_epoch = min(len(loaders.train), int(steps_cap)) if steps_cap else len(loaders.train)
    opt = build_optimisation(model, t_cfg, data.class_counts(), steps_per_epoch, device, env)
    method = str(t_cfg.get("threshold_method", "youden"))
    ckpt = new_checkpoint(cfg, data, checkpoint_config(cfg, data.classes, model), method)
    if resumed is not None:
        opt.load_state(resumed)
        for name in ("epoch", "global_step", "best_score", "best_epoch", "bad_epochs"):
            setattr(ckpt, name, getattr(resumed, name))
        ckpt.history = list(resumed.history)
        if env.is_main:
            log.info("resumed from %s at epoch %d", paths["last"], ckpt.epoch + 1)

    t_start = time.perf_counter()
    _run_epochs(ckpt, opt, loaders, t_cfg, steps_per_epoch, paths, env, t_start)
    summary = summary_of(ckpt, names, stopped=ckpt.stopped or "max_epochs",
                         seconds=round(time.perf_counter() - t_start, 1),
                         world_size=env.world_size, rank=env.rank)
    if env.is_main:
        summary["threshold"] = Checkpoint.load(paths["best"]).threshold
        write_summary(paths["summary"], summary)
        log.info("done: %s; best epoch %d val ROC-AUC %.4f -> %s", summary["stopped"],
                 ckpt.best_epoch, ckpt.best_score, paths["best"])
    return summary


def _run_epochs(ckpt: Checkpoint, opt: Optimisation, loaders, t_cfg: dict[str, Any],
                steps_per_epoch: int, paths: dict[str, Path], env: DistEnv,
                t_start: float) -> None:
    """Train and validate epoch after epoch until :func:`stop_reason` says why not."""
    max_minutes = t_cfg.get("max_minutes")
    deadline = t_start + 60 * float(max_minutes) if max_minutes else None
    for epoch in range(ckpt.epoch + 1, int(t_cfg.get("max_epochs", 10))):
        stats = train_epoch(opt, loaders.train, epoch, steps_per_epoch, env, deadline=deadline,
                            log_every=int(t_cfg.get("log_every_n_steps", 20)))
        ckpt.global_step += stats.steps
        p_val, y_val = validate(opt, loaders, env)
        row = {"epoch": epoch, "train_loss": round(stats.loss, 6),
               **epoch_metrics(y_val, p_val, ckpt.threshold_method or "youden",
                               float(t_cfg.get("target_sensitivity", 0.95))),
               "lr": opt.optimizer.param_groups[0]["lr"], "train_images": stats.images,
               "train_seconds": round(stats.seconds, 2),
               "train_images_per_s": round(stats.images / max(stats.seconds, 1e-9), 2)}
        improved = record_epoch(ckpt, row, float(t_cfg.get("min_delta", 0.0)))
        ckpt.stopped = stop_reason(t_cfg, epoch, ckpt.bad_epochs, stats.out_of_time)
        ckpt.finished = ckpt.stopped is not None
        if env.is_main:
            log_epoch(row, improved)
            opt.store_state(ckpt)
            if improved:
                ckpt.for_inference().save(paths["best"])
            ckpt.save(paths["last"])
            write_history_csv(paths["history"], ckpt.history)
        barrier(env)
        if ckpt.finished:
            break

