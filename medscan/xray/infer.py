"""Inference: probabilities for files, evaluation of a labelled folder.

Both go through :func:`medscan.xray.data.load_for_model` with the checkpoint's own image size,
resize mode, JPEG draft flag and input-path options, i.e. exactly the preprocessing of training.
Every image is its own item: an error reading one (unreadable, too large, anything) is
recorded in its row and the rest go on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medscan.io.atomic import write_csv, write_text

from . import data as xdata
from .checkpoint import Checkpoint
from .metrics import compute_metrics, save_plots

log = logging.getLogger("medscan.xray.infer")
PREDICTION_COLUMNS = ("file", "label", "prob_pneumonia", "pred")


def resolve_threshold(info: dict, override: float | None = None) -> float:
    """The decision threshold: an explicit override, else the checkpoint's; never a silent 0.5.

    Raises
    ------
    ValueError
        When neither exists.
    """
    if override is not None:
        return float(override)
    if info.get("threshold") is None:
        raise ValueError(
            f"{info.get('path')}: checkpoint stores no decision threshold; pass threshold=<value>"
        )
    return float(info["threshold"])


@torch.no_grad()
def predict_arrays(
    model, images: np.ndarray, batch_size: int = 32, tta: bool = False
) -> np.ndarray:
    """P(PNEUMONIA) for preprocessed ``(N, S, S)`` float32 images in [0, 1].

    ``tta`` averages the probabilities of the image and of four small, fixed shifts/zooms
    (no flips): a cheap test-time augmentation matching the training affine range.
    """
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).unsqueeze(1)
        views = [x]
        if tta:
            from torchvision.transforms.v2 import functional as tvf

            s = x.shape[-1]
            for dx, dy, sc in ((0.03, 0, 1.0), (-0.03, 0, 1.0), (0, 0.03, 1.05), (0, -0.03, 0.95)):
                views.append(
                    tvf.affine(x, angle=0.0, translate=[dx * s, dy * s], scale=sc, shear=[0.0])
                )
        probs = torch.stack([torch.softmax(model(v), 1)[:, 1] for v in views]).mean(0)
        out.append(probs.numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def predict_images(
    model,
    info: dict,
    paths: Sequence[str | Path],
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    tta: bool = False,
) -> list[dict]:
    """Predict PNEUMONIA/NORMAL for image files.

    Parameters
    ----------
    model : XrayNet
        From :func:`medscan.xray.load_checkpoint`.
    info : dict
        Its info dict (image size, resize mode, classes, threshold).
    paths : sequence of path
        Image files (JPEG/PNG/DICOM).
    threshold : float, optional
        Override the checkpoint's threshold.

    Returns
    -------
    list of dict
        One per path, in order: ``file``, ``label`` (the class folder name when the parent
        folder is a known class, else ""), ``prob_pneumonia`` (float or None), ``pred``
        (class name or ""), ``error`` ("" or the reason the file could not be read).
    """
    thr = resolve_threshold(info, threshold)
    classes = list(info["classes"])
    rows: list[dict] = []
    paths = [Path(p) for p in paths]
    chunk = max(batch_size, 256)  # bounded memory for large folders
    for start in range(0, len(paths), chunk):
        arrays, where = [], []
        for path in paths[start : start + chunk]:
            label = path.parent.name if path.parent.name in classes else ""
            row = {"file": str(path), "label": label, "prob_pneumonia": None, "pred": "",
                   "error": ""}
            try:
                arrays.append(xdata.load_for_model(path, info))
                where.append(len(rows))
            except xdata.ImageReadError as exc:
                row["error"] = exc.reason
                log.error("%s", exc)
            except Exception as exc:  # one bad image never ends the batch
                row["error"] = f"cannot read ({type(exc).__name__}: {exc})"
                log.error("%s: %s", path, row["error"])
            rows.append(row)
        if arrays:
            probs = predict_arrays(model, np.stack(arrays), batch_size, tta)
            for i, p in zip(where, probs, strict=True):
                rows[i]["prob_pneumonia"] = float(p)
                rows[i]["pred"] = classes[1] if p >= thr else classes[0]
    return rows


def evaluate_folder(
    model,
    info: dict,
    root: str | Path,
    split: str | None,
    output: str | Path,
    *,
    threshold: float | None = None,
    allow_train_overlap: bool = False,
    holdout: str | None = None,
    patient_regex: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    tta: bool = False,
) -> dict:
    """Evaluate a checkpoint on ``ROOT/<split>/<CLASS>/*`` and write the evaluation outputs.

    Writes ``metrics.json`` (keys :data:`medscan.xray.metrics.METRIC_KEYS`),
    ``predictions.csv`` (``file,label,prob_pneumonia,pred``), ``plots/*.png`` and
    ``evaluation.json`` (data set facts: class counts, shared patients, skipped files), each
    atomically.

    Parameters
    ----------
    holdout : {"checkpoint"}, optional
        Keep only the images that the checkpoint used as its validation set (by content
        hash), e.g. to report the carved-out validation split of a training folder.

    Raises
    ------
    LeakageError
        Images byte-identical to training images, unless ``allow_train_overlap``.
    DatasetError
        Layout problems (unknown/empty class folder).
    """
    thr = resolve_threshold(info, threshold)
    classes = list(info["classes"])
    records = xdata.scan_folder(root, split, classes=classes, patient_regex=patient_regex)
    ckpt = Checkpoint.load(info["path"])
    hashes = {str(r.path): xdata.content_hash(r.path) for r in records}
    if holdout == "checkpoint":
        keep = set(ckpt.val_hashes)
        records = [r for r in records if hashes[str(r.path)] in keep]
        hashes = {str(r.path): hashes[str(r.path)] for r in records}
        if not records:
            raise xdata.DatasetError(f"{root}: none of the checkpoint's validation images are here")
    leaked = xdata.leakage_check(hashes, set(ckpt.train_hashes),
                                 allow=allow_train_overlap)
    train_patients = set(ckpt.train_patients)
    shared: dict[str, int] = {}
    for r in records:
        if r.patient_id in train_patients:
            shared[r.patient_id] = shared.get(r.patient_id, 0) + 1
    if shared:
        log.warning(
            "%d patient ids of the evaluation set were also in training (%d images); "
            "allowed, reported in evaluation.json",
            len(shared),
            sum(shared.values()),
        )
    counts = xdata.class_counts(records, classes)
    log.info("evaluating %d images %s at threshold %.4f", len(records), counts, thr)
    rows = predict_images(model, info, [r.path for r in records], threshold=thr,
                          batch_size=batch_size, tta=tta)
    for row, rec in zip(rows, records, strict=True):
        row["label"] = classes[rec.label]
    ok = [(rec, row) for rec, row in zip(records, rows, strict=True) if not row["error"]]
    skipped = [{"file": row["file"], "reason": row["error"]} for row in rows if row["error"]]
    y = np.array([rec.label for rec, _ in ok], dtype=int)
    p = np.array([row["prob_pneumonia"] for _, row in ok], dtype=float)
    metrics = compute_metrics(y, p, thr, n_bootstrap=n_bootstrap, seed=seed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "predictions.csv", [r for _, r in ok], PREDICTION_COLUMNS)
    write_text(output / "metrics.json", json.dumps(metrics, indent=2))
    save_plots(y, p, thr, output / "plots", classes)
    facts = {
        "checkpoint": str(info["path"]),
        "data_root": str(root),
        "split": split,
        "holdout": holdout,
        "class_counts": counts,
        "threshold": thr,
        "threshold_source": "override" if threshold is not None else "checkpoint",
        "threshold_method": info.get("threshold_method"),
        "tta": tta,
        "train_overlap_files": leaked,
        "shared_patients": {"count": len(shared), "images": sum(shared.values()),
                            "ids": shared},
        "skipped": skipped,
    }
    write_text(output / "evaluation.json", json.dumps(facts, indent=2))
    return {"metrics": metrics, **facts}
