"""`vitkit pretrain`: MAE on a nested folder of unlabeled real images (scikit-learn's digits).

Acceptance: SIGKILL after an epoch, `--resume`, and the weights and the loss curve equal an
uninterrupted run's; the saved run is a ViTMAEForPreTraining directory transformers loads with
equal outputs; `vitkit train --model RUN/best` fine-tunes its encoder. Also: the unlabeled
listing and split, per-sample masks, starting from a ViT checkpoint, and the refusals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.checkpoints import load_model, save_model
from vitkit.checkpoints.hf_mae import load_mae
from vitkit.cli import main
from vitkit.errors import DatasetError, TrainingError
from vitkit.models.config import ViTConfig
from vitkit.models.vit import ViT
from vitkit.training.config import TrainConfig
from vitkit.training.tasks.mae_config import PretrainConfig, pretrain_recipe
from vitkit.training.tasks.mae_data import MaskedImages, list_images, unlabeled_splits
from vitkit.training.tasks.mae_spec import mae_model_spec

EPOCHS = 3
TINY = [
    "--preset", "vit-tiny-patch4-16", "--model-arg", "hidden_size=32",
    "--model-arg", "num_hidden_layers=2", "--model-arg", "num_attention_heads=2",
    "--model-arg", "intermediate_size=64", "--decoder-depth", "1", "--decoder-width", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 real handwritten digits as 16x16 PNGs in nested folders whose names mean nothing."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("unlabeled")
    for index, pixels in enumerate(digits.images[:240]):
        folder = root / f"batch{index % 3}" / ("deeper" if index % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray((pixels * 255 / 16).astype(np.uint8))
        picture.resize((16, 16), Image.Resampling.BICUBIC).save(folder / f"{index:04d}.png")
    (root / ".hidden").mkdir()
    Image.new("L", (16, 16)).save(root / ".hidden" / "skipped.png")
    (root / "notes.txt").write_text("not an image")
    return root


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vitkit", "pretrain", "--data", str(data), "--out", str(out),
        *TINY, "--epochs", str(EPOCHS), "--batch-size", "32", "--base-lr", "0.01",
        "--norm-pix-loss", "--log-every", "2", "--no-progress", "--device", "cpu",
        "--seed", "3", "--pictures", "4", *extra,
    ]  # fmt: skip


def _finished_epochs(out: Path) -> int:
    path = out / "last.pt"
    return int(torch.load(path, weights_only=True)["epoch"]) if path.exists() else 0


def _records(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("seconds", None)  # wall time is the one thing allowed to differ
    return records


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_pretraining(
    digits_folder: Path, tmp_path: Path
) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    whole = subprocess.run(
        _command(digits_folder, tmp_path / "whole"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    process = subprocess.Popen(
        _command(digits_folder, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while _finished_epochs(out) < 1:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _finished_epochs(out)
    assert 1 <= killed_at < EPOCHS, f"the run was not killed mid-way (epoch {killed_at})"
    resumed = subprocess.run(
        _command(digits_folder, out, "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out} after epoch {killed_at}/{EPOCHS}" in resumed.stderr

    reference = _records(tmp_path / "whole")
    assert _records(out) == reference  # the loss curve, step by step and per epoch
    assert sum(r["type"] == "step" for r in reference) >= EPOCHS * 3
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    expected = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    epochs = [r for r in reference if r["type"] == "epoch"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]  # it learns
    _check_saved_run(tmp_path / "whole", digits_folder, tmp_path)


def _check_saved_run(run: Path, data: Path, tmp_path: Path) -> None:
    """best/ loads in transformers with equal outputs; pictures exist; the encoder fine-tunes."""
    import transformers

    best = run / "best"
    ours, _ = load_mae(best)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.ViTMAEForPreTraining.from_pretrained(best).eval()
    assert reference.config.norm_pix_loss and reference.config.decoder_num_hidden_layers == 1
    pixels = torch.randn(2, 3, 16, 16)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        expected, got = reference(pixels, noise=noise), ours(pixels, noise=noise)
    assert (got.logits - expected.logits).abs().max() <= 1e-4
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-4
    pictures = sorted(p.name for p in (run / "reconstructions").iterdir())
    assert pictures == [f"epoch_{e:03d}.png" for e in range(1, EPOCHS + 1)]
    assert Image.open(run / "reconstructions" / pictures[-1]).size[1] > 4 * 16  # 4 rows

    labeled = tmp_path / "labeled"
    for index, path in enumerate(sorted(data.rglob("0*.png"))[:40]):
        folder = labeled / ("even" if index % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).symlink_to(path)
    arguments = ["train", "--data", str(labeled), "--model", str(best), "--out"]
    arguments += [str(tmp_path / "fine-tuned"), "--epochs", "1", "--batch-size", "16"]
    assert main([*arguments, "--no-progress", "--device", "cpu"]) == 0
    fine_tuned = load_model(tmp_path / "fine-tuned" / "best")
    assert fine_tuned.model.config.labels() == ["even", "odd"]


def test_unlabeled_listing_and_split(digits_folder: Path, tmp_path: Path) -> None:
    samples = list_images(digits_folder)
    assert len(samples) == 240  # nested folders read, hidden folders and text files skipped
    splits = unlabeled_splits(digits_folder, tmp_path, 0.1, max_val=20, seed=0)
    assert len(splits.val) == 20 and len(splits.train) == 220
    assert not {s.path for s in splits.val} & {s.path for s in splits.train}
    again = unlabeled_splits(digits_folder, tmp_path, 0.5, max_val=100, seed=9)  # split.json
    assert [s.path for s in again.val] == [s.path for s in splits.val]
    with pytest.raises(DatasetError, match="needs at least 2"):
        list_images(digits_folder / ".hidden")


def test_masks_follow_the_sample_seed_and_validation_masks_are_fixed(
    digits_folder: Path,
) -> None:
    samples = list_images(digits_folder)[:4]
    spec_transform = lambda image: torch.zeros(3, 16, 16)  # noqa: E731
    dataset = MaskedImages(samples, spec_transform, None, num_patches=16)
    _, first = dataset[(2, 1234)]
    _, again = dataset[(2, 1234)]
    _, other = dataset[(2, 1235)]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(dataset[3][1], dataset[3][1]) and not torch.equal(
        dataset[3][1], dataset[2][1]
    )


def test_starting_from_a_vit_checkpoint_keeps_its_encoder(tmp_path: Path) -> None:
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        id2label={0: "a", 1: "b"},
    )
    torch.manual_seed(0)
    classifier = ViT(config)
    save_model(classifier, tmp_path / "vit")
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), model=str(tmp_path / "vit"))
    settings = PretrainConfig(decoder_depth=1, decoder_width=32)
    spec = mae_model_spec(pretrain_recipe(cfg, settings), settings)
    encoder = spec.model.encoder  # type: ignore[union-attr]
    assert encoder.config.num_labels == 0
    ours = encoder.state_dict()
    for name, tensor in classifier.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(ours[name], tensor), name
    assert not encoder.pos_embed.requires_grad  # MAE's positions are fixed
    continued = spec.model
    save_model(continued, tmp_path / "mae")
    again = TrainConfig(data=str(tmp_path), out=str(tmp_path / "r1"), model=str(tmp_path / "mae"))
    resumed = mae_model_spec(again, PretrainConfig(mask_ratio=0.5)).model
    assert resumed.config.mask_ratio == 0.5  # masking from the settings, decoder as saved
    saved = continued.state_dict()
    assert all(torch.equal(t, saved[name]) for name, t in resumed.state_dict().items())
    with pytest.raises(TrainingError, match="--decoder-width 64"):
        clash = TrainConfig(
            data=str(tmp_path), out=str(tmp_path / "r2"), model=str(tmp_path / "mae")
        )
        mae_model_spec(clash, PretrainConfig(decoder_width=64))


def test_recipe_is_maes() -> None:
    cfg = pretrain_recipe(TrainConfig(data="d", out="o", batch_size=512), PretrainConfig())
    assert cfg.optimizer == "adamw" and cfg.weight_decay == 0.05
    assert cfg.lr == pytest.approx(1.5e-4 * 512 / 256)
    assert cfg.warmup_fraction == 0.05
    mine = pretrain_recipe(TrainConfig(data="d", out="o", lr=1e-3), PretrainConfig())
    assert mine.lr == 1e-3


def test_cli_help_speaks_of_unlabeled_images_and_mistakes_answer_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "folder names are ignored" in capsys.readouterr().out
    code = main(["pretrain", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert code == 1 and "nothing" in error and len(error.splitlines()) == 1
