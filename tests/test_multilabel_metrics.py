"""Multi-label metrics against scikit-learn, and per-label threshold tuning."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from vitkit.training.metrics import (
    average_precision,
    best_f1_threshold,
    format_multilabel_report,
    multilabel_report,
    roc_auc,
    tune_thresholds,
)


def scored_labels(seed: int, rows: int = 300, labels: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Unbalanced multi-hot truth and noisy scores that carry signal, with ties (rounded)."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.03, 0.5, labels)
    truth = (rng.random((rows, labels)) < prevalence).astype(np.int64)
    scores = np.clip(0.35 * truth + rng.normal(0.3, 0.2, (rows, labels)), 0, 1).round(2)
    return truth, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_equals_scikit_learn(seed: int) -> None:
    truth, scores = scored_labels(seed)
    thresholds = np.linspace(0.3, 0.6, truth.shape[1])
    labels = [f"label{i}" for i in range(truth.shape[1])]
    report = multilabel_report(truth, scores, thresholds, labels)
    decided = (scores >= thresholds).astype(np.int64)
    assert report["mAP"] == pytest.approx(
        sk.average_precision_score(truth, scores, average="macro")
    )
    assert report["roc_auc"] == pytest.approx(sk.roc_auc_score(truth, scores, average="macro"))
    for average in ("macro", "micro"):
        expected = sk.f1_score(truth, decided, average=average, zero_division=0)
        assert report[f"{average}_f1"] == pytest.approx(expected)
    assert report["macro_precision"] == pytest.approx(
        sk.precision_score(truth, decided, average="macro", zero_division=0)
    )
    assert report["macro_recall"] == pytest.approx(
        sk.recall_score(truth, decided, average="macro", zero_division=0)
    )
    assert report["exact_match"] == pytest.approx(sk.accuracy_score(truth, decided))
    per_ap = sk.average_precision_score(truth, scores, average=None)
    per_f1 = sk.f1_score(truth, decided, average=None, zero_division=0)
    for i, label in enumerate(labels):
        row = report["per_class"][label]
        assert row["ap"] == pytest.approx(per_ap[i]) and row["f1"] == pytest.approx(per_f1[i])
        assert row["support"] == truth[:, i].sum() and row["threshold"] == thresholds[i]
    assert "mAP" in format_multilabel_report(report)


def test_a_label_without_positives_is_left_out_of_the_means() -> None:
    truth, scores = scored_labels(3)
    truth[:, 0] = 0
    report = multilabel_report(truth, scores, 0.5, [str(i) for i in range(truth.shape[1])])
    assert report["per_class"]["0"]["ap"] is None and report["per_class"]["0"]["roc_auc"] is None
    assert report["labels_averaged"] == truth.shape[1] - 1
    expected = np.mean([sk.average_precision_score(truth[:, i], scores[:, i]) for i in range(1, 6)])
    assert report["mAP"] == pytest.approx(expected)
    assert average_precision(truth[:, 0], scores[:, 0]) is None
    assert roc_auc(np.ones(4), np.arange(4.0)) is None


def f1(truth: np.ndarray, decided: np.ndarray) -> float:
    true_positives = float((truth.astype(bool) & decided).sum())
    return 2 * true_positives / (truth.sum() + decided.sum()) if decided.sum() else 0.0


@pytest.mark.parametrize("seed", range(3))
def test_tuned_threshold_reaches_the_best_f1_of_any_cut(seed: int) -> None:
    truth, scores = scored_labels(seed, rows=120)
    thresholds, tuned = tune_thresholds(truth, scores)
    assert all(tuned)
    for i in range(truth.shape[1]):
        best_any_cut = max(f1(truth[:, i], scores[:, i] >= cut) for cut in np.unique(scores[:, i]))
        reached = sk.f1_score(truth[:, i], scores[:, i] >= thresholds[i], zero_division=0)
        assert reached == pytest.approx(best_any_cut)
        assert 0 <= thresholds[i] <= 1
    # halfway between two scores, not on one: an image just below the cut stays below
    threshold, _ = best_f1_threshold(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.4, 0.1]))
    assert threshold == pytest.approx(0.6)
    no_positive, tuned = tune_thresholds(np.zeros((5, 1)), np.random.default_rng(0).random((5, 1)))
    assert no_positive.tolist() == [0.5] and tuned == [False]
