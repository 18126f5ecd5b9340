"""Acceptance: a checkpoint saved by training loads in transformers' ViTForImageClassification with
the same logits and id2label from the folder names; `vitkit eval` reproduces the test metrics."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from vitkit.checkpoints import load_model
from vitkit.cli import main
from vitkit.experiments.demo_data import build_demo_folder
from vitkit.images.processor import ImageProcessor
from vitkit.training.trainer import TrainConfig, train

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder with word-named classes, run folder) after a short training run."""
    root = tmp_path_factory.mktemp("hf")
    data = build_demo_folder(root / "data", size=16, minority=8).root
    for split in ("train", "test"):
        for digit, word in enumerate(WORDS):
            (data / split / str(digit)).rename(data / split / word)
    config = TrainConfig(
        data=str(data),
        out=str(root / "run"),
        from_scratch=True,
        patch_embed="linear",  # transformers' ViT layout (a conv stem is vitkit's own)
        preset="vit-tiny-patch4-16",
        model_overrides={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        epochs=2,
        batch_size=32,
        optimizer="adamw",
        lr=3e-3,
        augment="natural",
        progress=False,
        device="cpu",
    )
    train(config)
    return data, root / "run"


def test_transformers_loads_the_trained_model_with_same_logits(trained: tuple[Path, Path]) -> None:
    import transformers

    data, run = trained
    best = run / "best"
    theirs = transformers.ViTForImageClassification.from_pretrained(best).eval()
    assert theirs.config.id2label == dict(enumerate(sorted(WORDS)))  # folder names, sorted
    ours = load_model(best).model
    images = sorted((data / "test").rglob("*.png"))[::40]
    pixels = ImageProcessor.from_pretrained(best)([str(p) for p in images])
    with torch.no_grad():
        expected = theirs(pixel_values=pixels).logits
        got = ours(pixels).logits
    assert expected.abs().max() > 0.1  # a trained head, not the zero-initialised one
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    hf_processor = transformers.AutoImageProcessor.from_pretrained(best)
    assert (hf_processor.size["height"], hf_processor.size["width"]) == (16, 16)


def test_eval_command_reproduces_the_test_metrics(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = trained
    assert (
        main(["eval", "--model", str(run / "best"), "--data", str(data), "--out", str(tmp_path)])
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    from_training = json.loads((run / "test" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(from_training["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(from_training["macro_f1"])
    with open(tmp_path / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["num_samples"] == len(list((data / "test").rglob("*.png")))
    assert all(Path(row["path"]).parent.name == row["true"] for row in rows)
    true = np.array([row["true"] for row in rows])
    predicted = np.array([row["predicted"] for row in rows])
    assert metrics["macro_f1"] == pytest.approx(
        skm.f1_score(true, predicted, average="macro", labels=sorted(WORDS), zero_division=0)
    )
    matrix = json.loads((tmp_path / "confusion_matrix.json").read_text())
    assert np.array(matrix["matrix"]).sum() == len(rows) and matrix["labels"] == sorted(WORDS)
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_rejects_folders_the_model_cannot_label(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    (tmp_path / "cats").mkdir()
    shutil.copy(next((data / "test" / "one").iterdir()), tmp_path / "cats" / "x.png")
    assert main(["eval", "--model", str(run / "best"), "--data", str(tmp_path)]) == 1
    assert "['cats']" in capsys.readouterr().err


def test_fine_tune_a_transformers_checkpoint_at_a_new_resolution(
    tiny_hf_classifier: Path, tmp_path: Path
) -> None:
    """`vitkit train --model DIR --image-size 96 --freeze-backbone`: a 64px checkpoint with
    ImageNet labels becomes a 96px digits classifier; only the new head learns."""
    import transformers

    data = build_demo_folder(tmp_path / "data", size=32, minority=None).root
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--model", str(tiny_hf_classifier)]
    args += ["--image-size", "96", "--freeze-backbone", "--epochs", "1", "--batch-size", "64"]
    args += ["--lr", "0.05", "--augment", "seed", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    original = transformers.ViTForImageClassification.from_pretrained(tiny_hf_classifier)
    tuned = transformers.ViTForImageClassification.from_pretrained(out / "best")
    assert tuned.config.image_size == 96 and tuned.config.id2label == {i: str(i) for i in range(10)}
    position = tuned.vit.embeddings.position_embeddings
    assert position.shape == (1, 1 + 6 * 6, 64)  # 4x4 grid resampled to 6x6, [CLS] kept
    torch.testing.assert_close(position[:, 0], original.vit.embeddings.position_embeddings[:, 0])
    before, after = original.state_dict(), tuned.state_dict()
    backbone = [
        k for k in after if not k.startswith("classifier.") and "position_embeddings" not in k
    ]
    assert len(backbone) > 10
    for name in backbone:  # frozen: bit-for-bit the checkpoint's weights
        torch.testing.assert_close(after[name], before[name], atol=0, rtol=0)
    assert tuned.classifier.weight.abs().sum() > 0  # the zero-initialised head has learned
    processor = json.loads((out / "best" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 96, "width": 96}
    assert (out / "test" / "metrics.json").exists()
