"""Clinical classification metrics with bootstrap CIs, calibration and threshold choice.

Point metrics come from scikit-learn; ECE and the bootstrap loop are written here because
scikit-learn has neither (ECE follows torchmetrics' ``BinaryCalibrationError``: equal-width
bins over the PNEUMONIA probability, L1 norm).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The keys of ``metrics.json`` (issue 4).
METRIC_KEYS = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
    "pr_auc",
    "ece",
    "threshold",
    "confusion",
    "n",
    "ci",
)
_CI_KEYS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc", "ece")


def choose_threshold(
    labels: Sequence[int],
    probs: Sequence[float],
    method: str = "youden",
    target_sensitivity: float = 0.95,
) -> float:
    """Decision threshold on P(PNEUMONIA), chosen on validation data.

    Parameters
    ----------
    labels : sequence of {0, 1}
    probs : sequence of float
        P(PNEUMONIA).
    method : {"youden", "sensitivity"}
        ``youden`` maximises sensitivity + specificity - 1 on the ROC curve; ``sensitivity``
        takes the highest threshold whose sensitivity is at least ``target_sensitivity``.
    target_sensitivity : float

    Raises
    ------
    ValueError
        When the data hold only one class (no threshold can be chosen).
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    if len(np.unique(y)) < 2:
        raise ValueError("cannot choose a threshold: validation data hold only one class")
    fpr, tpr, thr = roc_curve(y, p)
    thr = np.clip(thr, 0.0, 1.0)  # sklearn's first threshold is +inf
    if method == "youden":
        i = int(np.argmax(tpr - fpr))
    elif method == "sensitivity":
        ok = np.flatnonzero(tpr >= target_sensitivity)
        i = int(ok[0])
    else:
        raise ValueError(f"threshold method must be 'youden' or 'sensitivity', not {method!r}")
    return float(thr[i])


def expected_calibration_error(
    labels: Sequence[int], probs: Sequence[float], n_bins: int = 15
) -> float:
    """Binary ECE: ``sum_b n_b / n * |mean(y in b) - mean(p in b)|`` over equal-width bins."""
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    if len(y) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(y) * abs(y[m].mean() - p[m].mean())
    return float(total)


def _point(y: np.ndarray, p: np.ndarray, pred: np.ndarray, n_bins: int) -> dict:
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    both = len(np.unique(y)) == 2
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "ece": expected_calibration_error(y, p, n_bins),
        "confusion": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def _fast_point(y: np.ndarray, p: np.ndarray, pred: np.ndarray, n_bins: int) -> dict:
    """:func:`_point` from confusion counts, without sklearn's input checks.

    Same definitions; the bootstrap calls it a thousand times. AUCs come from scikit-learn.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    tp = int(np.sum((pred == 1) & (y == 1)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    tn = len(y) - tp - fp - fn
    both = 0 < y.sum() < len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / len(y),
        "precision": precision,
        "recall": recall,
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "ece": expected_calibration_error(y, p, n_bins),
    }


def compute_metrics(
    labels: Sequence[int],
    probs: Sequence[float],
    threshold: float,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
) -> dict:
    """All metrics of ``metrics.json`` at a given threshold, with 95% bootstrap CIs.

    Parameters
    ----------
    labels : sequence of {0, 1}
        1 = PNEUMONIA (positive).
    probs : sequence of float
        P(PNEUMONIA).
    threshold : float
        ``pred = prob >= threshold``.
    n_bootstrap : int
        Resamples (with replacement, whole set) for the percentile CIs; 0 disables them.
    seed : int
    n_bins : int
        ECE bins.

    Returns
    -------
    dict
        Keys :data:`METRIC_KEYS`; ``confusion`` is ``[[TN, FP], [FN, TP]]`` (rows = truth
        NORMAL, PNEUMONIA); ``ci`` maps each metric to ``[low, high]`` (2.5 and 97.5
        percentiles; NaN-free resamples only).
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError("labels and probs must be 1-D and of equal length")
    pred = (p >= threshold).astype(int)
    out = _point(y, p, pred, n_bins)
    ci: dict[str, list[float] | None] = {}
    if n_bootstrap > 0 and len(y) > 1:
        rng = np.random.default_rng(seed)
        samples: dict[str, list[float]] = {k: [] for k in _CI_KEYS}
        for _ in range(n_bootstrap):
            i = rng.integers(0, len(y), len(y))
            m = _fast_point(y[i], p[i], pred[i], n_bins)
            for k in _CI_KEYS:
                if np.isfinite(m[k]):
                    samples[k].append(m[k])
        for k in _CI_KEYS:
            vals = samples[k]
            ci[k] = (
                [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
                if vals
                else None
            )
    out.update(threshold=float(threshold), n=len(y), ci=ci)
    return {k: out[k] for k in METRIC_KEYS}


def save_plots(
    labels: Sequence[int],
    probs: Sequence[float],
    threshold: float,
    folder,
    classes: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    n_bins: int = 15,
) -> list:
    """Write ``roc.png``, ``pr.png``, ``confusion.png``, ``reliability.png`` into ``folder``.

    Each file is written to a temp name and renamed. The figures are ``matplotlib.figure.Figure``
    objects on their own Agg canvas, not pyplot's: the caller's backend and open figures are
    left alone. Returns the written paths.
    """
    from pathlib import Path

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    from medscan.io.atomic import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    written = []

    def _axes():
        fig = Figure(figsize=(4.5, 4.5))
        FigureCanvasAgg(fig)
        return fig, fig.subplots()

    def _save(fig, name):
        atomic_write(folder / name,
                     lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
        written.append(folder / name)

    if len(np.unique(y)) == 2:
        fig, ax = _axes()
        RocCurveDisplay.from_predictions(y, p, ax=ax, name="PNEUMONIA")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title("ROC")
        _save(fig, "roc.png")
        fig, ax = _axes()
        PrecisionRecallDisplay.from_predictions(y, p, ax=ax, name="PNEUMONIA")
        ax.set_title("Precision-recall")
        _save(fig, "pr.png")
    fig, ax = _axes()
    ConfusionMatrixDisplay.from_predictions(
        y, (p >= threshold).astype(int), labels=[0, 1], display_labels=list(classes), ax=ax,
        colorbar=False,
    )
    ax.set_title(f"Confusion (threshold {threshold:.3f})")
    _save(fig, "confusion.png")
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1)
    centers, freq, conf, counts = [], [], [], []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            centers.append((edges[b] + edges[b + 1]) / 2)
            freq.append(y[m].mean())
            conf.append(p[m].mean())
            counts.append(int(m.sum()))
    fig, ax = _axes()
    ax.bar(centers, freq, width=1 / n_bins, edgecolor="k", alpha=0.6, label="observed")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    ax.plot(conf, freq, "o-", ms=3, label="mean prob")
    ax.set_xlabel("P(PNEUMONIA)")
    ax.set_ylabel("fraction PNEUMONIA")
    ax.set_title(f"Reliability (ECE {expected_calibration_error(y, p, n_bins):.3f})")
    ax.legend(loc="upper left")
    _save(fig, "reliability.png")
    return written
