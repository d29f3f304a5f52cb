"""What a training run tells: log lines, ``metrics.csv`` and ``train_summary.json``.

Only rank 0 calls these (the callers check ``env.is_main``). Files are written atomically with
:mod:`medscan.io.atomic`, so a resume rewrites ``metrics.csv`` whole and keeps earlier rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medscan.io.atomic import write_csv, write_text

from . import data as xdata

log = logging.getLogger("medscan.xray.train")


def run_paths(out: Path) -> dict[str, Path]:
    """Files of a run under ``output``: ``best``, ``last``, ``history``, ``summary``."""
    return {"best": out / "checkpoints" / "best.pt", "last": out / "checkpoints" / "last.pt",
            "history": out / "metrics.csv", "summary": out / "train_summary.json"}


def log_split(root: Path, source: str, train: Sequence[xdata.ImageRecord],
              val: Sequence[xdata.ImageRecord], classes: list[str],
              shared: dict[str, int]) -> None:
    """Images, patients and class counts of both sets; patients shared between them."""
    log.info("data root %s; validation: %s", root, source)
    for name, records in (("train:", train), ("val:  ", val)):
        log.info("%s %d images, %d patients, %s", name, len(records),
                 len({r.patient_id for r in records}), xdata.class_counts(records, classes))
    if shared:
        log.warning("%d patient ids are in both train and val (%d val images)", len(shared),
                    sum(shared.values()))


def log_step(epoch: int, step: int, steps: int, mean_loss: float, images_per_s: float) -> None:
    """Running training loss of an epoch (every ``trainer.log_every_n_steps``)."""
    log.info("epoch %d step %d/%d loss %.4f (%.1f img/s per process)", epoch, step, steps,
             mean_loss, images_per_s)


def log_epoch(row: dict[str, Any], improved: bool) -> None:
    """One line per epoch: losses, validation ROC-AUC and accuracy at the chosen threshold."""
    log.info(
        "epoch %d: train_loss %.4f val_loss %.4f val_roc_auc %.4f val_acc %.4f "
        "(threshold %.3f) %.1f img/s%s",
        row["epoch"], row["train_loss"], row["val_loss"], row["val_roc_auc"],
        row["val_accuracy"], row["threshold"], row["train_images_per_s"],
        " *best*" if improved else "",
    )


def write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch log as CSV (rewritten whole, atomically); nothing for an empty history."""
    if history:
        write_csv(path, history, list(history[0]))


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """``train_summary.json`` (indented JSON, atomically)."""
    write_text(path, json.dumps(summary, indent=2))


def summary_of(ckpt: Any, paths: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The summary of a run from its last checkpoint (a :class:`.checkpoint.Checkpoint`).

    Keys: ``best_epoch``, ``best_score`` (validation ROC-AUC), ``epochs_run``, ``stopped``,
    ``checkpoints`` (``best``/``last`` paths), ``history``, then ``extra``.
    """
    return {
        "best_epoch": ckpt.best_epoch,
        "best_score": ckpt.best_score,
        "epochs_run": len(ckpt.history),
        "stopped": ckpt.stopped,
        "checkpoints": paths,
        "history": ckpt.history,
        **extra,
    }
