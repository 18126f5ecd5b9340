"""Multi-label training on real images (digit mosaics): what it saves loads in transformers with
problem_type and the same logits, thresholds are tuned on validation and applied on test, and
`vitkit eval` on a label table reproduces the test pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import vitkit
from vitkit.cli import main
from vitkit.experiments.mosaics import build_mosaics
from vitkit.inference.heads import MULTI_LABEL
from vitkit.training.augment import mix_batch
from vitkit.training.labels import read_label_table
from vitkit.training.metrics import tune_thresholds
from vitkit.training.specs import vit_model_spec
from vitkit.training.tasks.multilabel import MultiLabelBuilder, MultiLabelTask
from vitkit.training.trainer import TrainConfig, TrainResult, train

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mosaics(tmp_path_factory.mktemp("mosaics"), sizes=(160, 48, 48), seed=0).root


@pytest.fixture(scope="module")
def trained(mosaics: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    config = TrainConfig(
        data=str(mosaics),
        out=str(tmp_path_factory.mktemp("run")),
        from_scratch=True,
        patch_embed="linear",  # transformers' ViT layout (a conv stem is vitkit's own)
        preset="vit-tiny-patch4-16",
        model_overrides=dict(TINY),
        epochs=3,
        batch_size=16,
        optimizer="adamw",
        lr=3e-3,
        augment="none",
        mix="mixup",  # multi-hot targets blended with the images
        progress=False,
    )
    return train(config, MultiLabelBuilder())


def test_best_is_a_sigmoid_head_with_tuned_thresholds(trained: TrainResult, mosaics: Path) -> None:
    best = trained.out / "best"
    written = json.loads((best / "config.json").read_text())
    assert written["problem_type"] == MULTI_LABEL
    thresholds = written["vitkit"]["thresholds"]
    assert len(thresholds) == 10 and len(set(thresholds)) > 1  # one per label, tuned
    # the saved thresholds are the max-F1 ones of the best epoch on the validation split
    classifier = vitkit.load(best)
    val = read_label_table(mosaics / "val.csv")
    targets = np.array([[label in row.labels for label in classifier.labels] for row in val.rows])
    scores = classifier.probabilities(classifier.prepare([row.path for row in val.rows]))
    tuned, _ = tune_thresholds(targets, scores.numpy())
    assert np.allclose(tuned, thresholds, atol=1e-5)
    epochs = [r for r in trained.history if r["type"] == "epoch"]
    assert trained.best_epoch == 1 + int(np.argmin([r["val_loss"] for r in epochs]))
    assert {"val_mAP", "val_macro_f1", "val_micro_f1", "val_roc_auc"} <= set(epochs[0])
    test = json.loads((trained.out / "test" / "metrics.json").read_text())
    assert test["thresholds_from"] == "saved with the model" and 0 < test["mAP"] <= 1


def test_transformers_loads_it_with_problem_type_and_the_same_logits(
    trained: TrainResult, mosaics: Path
) -> None:
    best = trained.out / "best"
    theirs = transformers.ViTForImageClassification.from_pretrained(best).eval()
    assert theirs.config.problem_type == MULTI_LABEL
    ours = vitkit.load(best)
    paths = [str(mosaics / "images" / "test" / f"{i:05d}.png") for i in range(8)]
    pixels = ours.prepare(paths)
    with torch.no_grad():
        reference = theirs(pixel_values=pixels).logits
    assert (ours.logits(pixels) - reference).abs().max().item() < 1e-4
    pipe = transformers.pipeline("image-classification", model=str(best), device="cpu")
    for answer, expected in zip(ours.predict(paths), pipe(paths, top_k=10), strict=True):
        scores = {p["label"]: p["score"] for p in expected}  # sigmoid: problem_type says so
        assert all(abs(p["score"] - scores[p["label"]]) < 1e-4 for p in answer)


def test_eval_on_the_test_table_repeats_the_test_pass(
    trained: TrainResult, mosaics: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = trained.out / "best"
    assert main(["eval", "--model", str(best), "--data", str(mosaics), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    test = json.loads((trained.out / "test" / "metrics.json").read_text())
    for key in ("mAP", "macro_f1", "micro_f1", "roc_auc"):
        assert report[key] == pytest.approx(test[key], abs=1e-6)
    assert "mAP" in capsys.readouterr().out
    args = ["eval", "--model", str(best), "--data", str(mosaics), "--threshold", "0.5"]
    assert main([*args, "--out", str(tmp_path / "half")]) == 0
    half = json.loads((tmp_path / "half" / "metrics.json").read_text())
    assert half["macro_f1"] == pytest.approx(test["macro_f1_at_0.5"], abs=1e-6)


def test_task_loss_is_weighted_bce_on_the_mixed_multi_hot_batch(tmp_path: Path) -> None:
    config = TrainConfig(
        data=str(tmp_path), out=str(tmp_path / "run"), from_scratch=True,
        preset="vit-tiny-patch4-16", model_overrides=dict(TINY),
    )  # fmt: skip
    labels = ["a", "b", "c"]
    task = MultiLabelTask(vit_model_spec(config, dict(enumerate(labels))), labels, mix="mixup")
    assert task.model.config.problem_type == MULTI_LABEL
    with torch.no_grad():
        task.model.head.weight.normal_()  # the new head is zero: make the logits differ
    task.pos_weight = torch.tensor([1.0, 3.0, 5.0])  # --balance weighted-loss
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    images = torch.randn(4, 3, 16, 16)
    torch.manual_seed(0)
    loss = task(images, targets)["loss"]
    torch.manual_seed(0)
    mixed_images, mixed = mix_batch(images, targets, 3, "mixup", 1.0)
    assert ((mixed >= 0) & (mixed <= 1)).all() and not torch.equal(mixed, targets)
    logits = task.model(mixed_images).logits
    weight = task.pos_weight
    manual = -(weight * mixed * logits.sigmoid().log() + (1 - mixed) * (-logits).sigmoid().log())
    assert loss.item() == pytest.approx(manual.mean().item(), rel=1e-5)


def test_train_cli_reads_a_label_table_and_reports_bad_rows(
    mosaics: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = (mosaics / "train.csv").read_text().splitlines()[:65]
    rows += ["images/train/missing.png,1", rows[1]]  # a missing file, a path listed twice
    (mosaics / "small.csv").write_text("\n".join(rows) + "\n")
    args = [
        "train",
        "--data",
        str(mosaics / "small.csv"),
        "--from-scratch",
        "--patch-embed",
        "linear",
    ]
    args += ["--preset", "vit-tiny-patch4-16", "--epochs", "1", "--batch-size", "16"]
    args += [f"--model-arg={k}={v}" for k, v in TINY.items()] + ["--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a"), "--on-bad-image", "fail"]) == 1
    err = capsys.readouterr().err
    assert "2 bad row(s)" in err and "no such file" in err and "listed twice" in err
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "listed twice" in (tmp_path / "b" / "bad_rows.txt").read_text()
    config = json.loads((tmp_path / "b" / "best" / "config.json").read_text())
    assert config["problem_type"] == MULTI_LABEL and len(config["vitkit"]["thresholds"]) >= 9
    assert "best epoch 1" in capsys.readouterr().out  # one table: no test split to report
