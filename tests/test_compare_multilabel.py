"""`vitkit compare --data TABLES`: on a folder of label tables (2x2 mosaics of real
digits) every row trains multi-label, the ResNet baseline and the DeiT student included; the table's
columns are mAP / macro-F1 / micro-F1 / ROC-AUC; the MAE reads the training table's images; and
each row's saved model loads in `vitkit.load` as a sigmoid head whose answers reproduce the table.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoConfig

import vitkit
from vitkit.checkpoints.hf_deit import load_student
from vitkit.cli import main
from vitkit.experiments.mosaics import build_mosaics
from vitkit.training.labels import read_label_table

ROWS = ["baseline", "scratch", "finetune224", "finetune384", "distilled"]
TINY_VIT = [
    "hidden_size=16",
    "num_hidden_layers=1",
    "num_attention_heads=2",
    "intermediate_size=32",
]


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.csv / val.csv / test.csv over 16x16 mosaics of real digits (0-4 labels each)."""
    return build_mosaics(tmp_path_factory.mktemp("mosaics"), sizes=(96, 32, 48), seed=1).root


def _compare(data: Path, out: Path) -> int:
    arguments = ["compare", "--data", str(data), "--out", str(out), "--rows", ",".join(ROWS)]
    arguments += ["--epochs", "1", "--baseline-epochs", "1", "--pretrain-epochs", "1"]
    arguments += ["--batch-size", "32", "--image-size", "16", "--no-progress"]
    for field in TINY_VIT:
        arguments += ["--vit-arg", field]
    return main(arguments)


def _mean_ap(truth: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's average precision, averaged over the labels with a positive image."""
    from sklearn.metrics import average_precision_score

    present = [i for i in range(truth.shape[1]) if truth[:, i].any()]
    return float(np.mean([average_precision_score(truth[:, i], scores[:, i]) for i in present]))


def test_compare_on_label_tables_trains_every_row_multi_label(
    mosaics: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    assert _compare(mosaics, out) == 0
    with open(out / "table.csv") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    metrics = ["mAP", "macro_f1", "micro_f1", "roc_auc"]
    assert columns == [
        "row", "model", "image_size", "parameters", "best_epoch", "epochs", *metrics,
        "train_seconds", "cpu_seconds", "notes",
    ]  # fmt: skip
    assert [row["row"] for row in rows] == ROWS
    table = (out / "table.md").read_text()
    assert "| mAP | macro-F1 | micro-F1 | ROC-AUC |" in table and "Accuracy" not in table
    assert "one sigmoid per label" in table  # the distilled row's teacher terms
    assert json.loads((out / "compare.json").read_text())["task"] == "multi-label"
    assert not (out / "confusion").exists() or not list((out / "confusion").iterdir())

    # the MAE pre-trained on exactly the images train.csv lists
    split = json.loads((out / "rows" / "pretrain" / "split.json").read_text())
    seen = {str((mosaics / name).resolve()) for name, _ in split["train"] + split["val"]}
    listed = {str(Path(r.path).resolve()) for r in read_label_table(mosaics / "train.csv").rows}
    assert seen == listed

    test_rows = read_label_table(mosaics / "test.csv").rows
    labels = [str(n) for n in range(10)]
    truth = np.array([[label in r.labels for label in labels] for r in test_rows], dtype=float)
    for row in rows:
        best = out / "rows" / row["row"] / "best"
        written = json.loads((best / "config.json").read_text())
        assert written["problem_type"] == "multi_label_classification"
        # transformers reads it as a multi-label head too (its pipeline then applies sigmoid)
        assert AutoConfig.from_pretrained(best).problem_type == "multi_label_classification"
        classifier = vitkit.load(best)
        assert classifier.head.kind == "sigmoid"
        assert classifier.head.thresholds == tuple(written["vitkit"]["thresholds"])
        paths = [r.path for r in test_rows]
        answers = classifier.predict(paths, top_k=len(labels))
        # every label answered with its own threshold; the ones that pass are never cut by top_k
        assert all({a["label"] for a in answer} == set(labels) for answer in answers)
        assert all({"threshold", "positive"} <= set(a) for answer in answers for a in answer)
        for full, short in zip(answers, classifier.predict(paths, top_k=1), strict=True):
            passing = {a["label"] for a in full if a["positive"]}
            assert passing <= {a["label"] for a in short} and len(short) >= 1
        scores = np.array(
            [[{a["label"]: a["score"] for a in ans}[x] for x in labels] for ans in answers]
        )
        # the saved model answers as it did in the test pass (scores.csv: 6 decimals) ...
        with open(out / "rows" / row["row"] / "test" / "scores.csv") as handle:
            lines = list(csv.reader(handle))
        assert lines[0][3:] == labels
        tested = np.array([[float(v) for v in line[3:]] for line in lines[1:]])
        np.testing.assert_allclose(scores, tested, atol=1e-5)
        # ... and the table's mAP is scikit-learn's on those answers
        assert float(row["mAP"]) == pytest.approx(_mean_ap(truth, scores), abs=2e-3), row["row"]
        assert 0.0 <= float(row["macro_f1"]) <= 1.0 and 0.0 <= float(row["roc_auc"]) <= 1.0
    baseline = json.loads((out / "rows" / "baseline" / "best" / "config.json").read_text())
    assert baseline["model_type"] == "resnet"  # transformers' ResNetForImageClassification layout
    student, _ = load_student(out / "rows" / "distilled" / "best")
    assert student.head_dist.weight.abs().sum() > 0  # the teacher's head learned too

    # `vitkit distill` on the tables: the multi-label baseline row teaches a new student
    capsys.readouterr()
    student = ["--student", "vit-tiny-patch4-16", "--data", str(mosaics), "--epochs", "1"]
    student += ["--out", str(tmp_path / "deit"), "--batch-size", "32", "--no-progress"]
    for field in TINY_VIT:
        student += ["--model-arg", field]
    assert main(["distill", "--teacher", str(out / "rows" / "baseline" / "best"), *student]) == 0
    printed = capsys.readouterr().out
    assert "test split (48 images), heads averaged" in printed and "ROC-AUC" in printed
    assert vitkit.load(tmp_path / "deit" / "best").head.kind == "sigmoid"

    # a single table has no test split shared by the rows: one line, no traceback
    capsys.readouterr()
    assert _compare(mosaics / "train.csv", tmp_path / "one") == 1
    error = capsys.readouterr().err.strip()
    assert "train.csv and test.csv" in error and "Traceback" not in error


def test_a_softmax_teacher_cannot_teach_a_multi_label_student(
    mosaics: Path, tmp_path: Path
) -> None:
    """A single-label teacher's softmax scores compete across labels: refused before training."""
    from vitkit.checkpoints import save_pretrained
    from vitkit.errors import TrainingError
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT
    from vitkit.training.config import TrainConfig
    from vitkit.training.tasks.distill import DistillationBuilder
    from vitkit.training.trainer import train

    sizes = {key: int(value) for key, value in (field.split("=") for field in TINY_VIT)}
    labels = {i: str(i) for i in range(10)}
    save_pretrained(ViT(preset("vit-tiny-patch4-16", **sizes, id2label=labels)), tmp_path / "t")
    cfg = TrainConfig(data=str(mosaics), out=str(tmp_path / "run"), epochs=1, progress=False)
    with pytest.raises(TrainingError, match=r"softmax head.*multi-label teacher"):
        train(cfg, DistillationBuilder(tmp_path / "t", "vit-tiny-patch4-16", overrides=sizes))
    assert not (tmp_path / "run" / "last.pt").exists()
