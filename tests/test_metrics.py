"""vitkit.training.metrics against scikit-learn (the reference) on real and adversarial label sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from vitkit.training.metrics import (
    classification_report,
    confusion_matrix,
    format_report,
    macro_table,
)


def _check_against_sklearn(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> None:
    labels = [f"class-{i}" for i in range(num_classes)]
    ours = classification_report(y_true, y_pred, labels)
    classes = list(range(num_classes))
    np.testing.assert_array_equal(
        ours["confusion_matrix"], skm.confusion_matrix(y_true, y_pred, labels=classes)
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    for i, label in enumerate(labels):
        row = ours["per_class"][label]
        assert row["precision"] == pytest.approx(precision[i], abs=1e-12)
        assert row["recall"] == pytest.approx(recall[i], abs=1e-12)
        assert row["f1"] == pytest.approx(f1[i], abs=1e-12)
        assert row["support"] == support[i]
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for name, ref in (
        ("macro_precision", skm.precision_score),
        ("macro_recall", skm.recall_score),
        ("macro_f1", skm.f1_score),
    ):
        expected = ref(y_true, y_pred, labels=classes, average="macro", zero_division=0)
        assert ours[name] == pytest.approx(expected, abs=1e-12), name


def test_real_classifier_on_digits_matches_sklearn() -> None:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    # A deliberately weak model so that every kind of error shows up in the matrix.
    model = LogisticRegression(max_iter=500).fit(x_train[:60], y_train[:60])
    _check_against_sklearn(y_test, model.predict(x_test), 10)


@pytest.mark.parametrize("seed", range(5))
def test_random_labels_with_missing_and_never_predicted_classes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = 6
    y_true = rng.integers(0, num_classes - 1, size=80)  # class 5 never occurs
    y_pred = np.where(rng.random(80) < 0.6, y_true, rng.integers(0, num_classes, size=80))
    y_pred[y_pred == 2] = 3  # class 2 never predicted: precision 0 by convention
    _check_against_sklearn(y_true, y_pred, num_classes)


def test_perfect_and_constant_predictions() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    perfect = classification_report(y, y, ["a", "b", "c"])
    assert perfect["accuracy"] == perfect["macro_f1"] == 1.0
    collapsed = classification_report(y, np.zeros_like(y), ["a", "b", "c"])
    assert collapsed["per_class"]["b"]["f1"] == 0.0
    _check_against_sklearn(y, np.zeros_like(y), 3)


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix([0, 1], [0], 3)


def test_text_outputs_name_every_class() -> None:
    report = classification_report([0, 1, 1], [0, 1, 0], ["cat", "dog"])
    text = format_report(report)
    assert "cat" in text and "dog" in text and "macro avg" in text
    table = macro_table({"ViT": report})
    assert table.splitlines()[0] == "| Model | Accuracy | F1 | Precision | Recall |"
    assert f"{report['macro_f1']:.4f}" in table
