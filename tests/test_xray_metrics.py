"""medscan.xray.metrics against scikit-learn on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from medscan.xray.metrics import (
    METRIC_KEYS,
    choose_threshold,
    compute_metrics,
    expected_calibration_error,
    save_plots,
)


@pytest.fixture
def scores():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    return y, p


def test_point_metrics_agree_with_sklearn(scores):
    y, p = scores
    m = compute_metrics(y, p, 0.5, n_bootstrap=0)
    pred = (p >= 0.5).astype(int)
    assert list(m) == list(METRIC_KEYS)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["confusion"] == skm.confusion_matrix(y, pred).tolist()
    assert m["n"] == 300 and m["threshold"] == 0.5


def test_hand_computed_case():
    y = [0, 0, 0, 1, 1, 1, 1, 1]
    p = [0.1, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.95]
    m = compute_metrics(y, p, 0.5, n_bootstrap=0)
    # TN=2 FP=1 FN=1 TP=4
    assert m["confusion"] == [[2, 1], [1, 4]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    # 15 positive/negative pairs, only (0.6 NORMAL > 0.4 PNEUMONIA) is ranked wrong
    assert m["roc_auc"] == pytest.approx(14 / 15)


def test_ece_matches_calibration_curve(scores):
    y, p = scores
    n_bins = 10
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    bins = np.linspace(0, 1, n_bins + 1)
    counts = np.histogram(p, bins=bins)[0]
    counts = counts[counts > 0]
    reference = float(np.sum(counts / len(y) * np.abs(prob_true - prob_pred)))
    assert expected_calibration_error(y, p, n_bins) == pytest.approx(reference, abs=1e-9)
    # perfectly calibrated constant predictions: ECE 0
    assert expected_calibration_error([0, 1, 0, 1], [0.5] * 4) == pytest.approx(0.0)


def test_bootstrap_cis(scores):
    from medscan.xray.metrics import _fast_point, _point

    y, p = scores
    # the bootstrap's fast path computes the same numbers as the sklearn path
    rng = np.random.default_rng(1)
    for _ in range(5):
        i = rng.integers(0, len(y), len(y))
        pred = (p[i] >= 0.5).astype(int)
        slow, fast = _point(y[i], p[i], pred, 15), _fast_point(y[i], p[i], pred, 15)
        for key, value in fast.items():
            assert value == pytest.approx(slow[key]), key
    a = compute_metrics(y, p, 0.5, n_bootstrap=200, seed=3)
    b = compute_metrics(y, p, 0.5, n_bootstrap=200, seed=3)
    assert a["ci"] == b["ci"]
    for key in ("accuracy", "recall", "specificity", "roc_auc", "pr_auc", "f1", "ece"):
        low, high = a["ci"][key]
        assert low <= a[key] <= high, key
        assert high - low < 0.3, key


def test_thresholds(scores):
    y, p = scores
    fpr, tpr, thr = skm.roc_curve(y, p)
    t = choose_threshold(y, p, "youden")
    pred = p >= t
    j = pred[y == 1].mean() - pred[y == 0].mean()
    assert j == pytest.approx(np.max(tpr - fpr))
    t95 = choose_threshold(y, p, "sensitivity", 0.95)
    assert (p[y == 1] >= t95).mean() >= 0.95
    # the highest such threshold: one notch up and sensitivity drops below the target
    higher = thr[thr > t95]
    if len(higher):
        assert (p[y == 1] >= higher.min()).mean() < 0.95
    with pytest.raises(ValueError, match="one class"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="youden"):
        choose_threshold(y, p, "magic")


def test_plots_written(tmp_path, scores):
    y, p = scores
    written = save_plots(y, p, 0.5, tmp_path / "plots")
    names = sorted(w.name for w in written)
    assert names == ["confusion.png", "pr.png", "reliability.png", "roc.png"]
    assert all((tmp_path / "plots" / n).stat().st_size > 5000 for n in names)
    assert not list((tmp_path / "plots").glob(".*"))  # no temp files left
