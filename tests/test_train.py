"""The training loop's parts and contracts, on tiny models and the real digits data (fast)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vitkit.experiments.demo_data import build_demo_folder
from vitkit.training import data as vdata
from vitkit.training.model_spec import ModelSpec
from vitkit.training.trainer import (
    TrainConfig,
    TrainingError,
    build_optimizer,
    train,
    vit_model_spec,
    warmup_cosine,
)

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small slice of the real digits: 8x8 PNGs, train/test, class 8 cut to 10%."""
    return build_demo_folder(tmp_path_factory.mktemp("digits") / "data", size=8, minority=8).root


def tiny_config(data: Path, out: Path, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        data=str(data),
        out=str(out),
        from_scratch=True,
        preset="vit-tiny-patch4-8",
        model_overrides=dict(TINY_VIT),
        epochs=1,
        batch_size=64,
        optimizer="adamw",
        lr=1e-3,
        augment="none",
        mix="none",
        label_smoothing=0.0,
        warmup_fraction=0.05,
        progress=False,
        log_every=1,
        device="cpu",
    )
    settings.update(changes)
    return TrainConfig(**settings)


def test_warmup_then_cosine() -> None:
    factor = warmup_cosine(total_steps=110, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0, abs=1e-12)
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_optimizers_follow_the_recipes(digits_root: Path, tmp_path: Path) -> None:
    spec = vit_model_spec(tiny_config(digits_root, tmp_path), {0: "a", 1: "b"})
    sgd = build_optimizer(spec.model, tiny_config(digits_root, tmp_path, optimizer="sgd", lr=None))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 0.0
    assert sgd.defaults["lr"] == 0.01
    adamw = build_optimizer(spec.model, tiny_config(digits_root, tmp_path, lr=None))
    decayed, plain = adamw.param_groups
    names = {id(p): n for n, p in spec.model.named_parameters()}
    assert {names[id(p)] for p in plain["params"]} >= {
        "pos_embed",
        "cls_token",
        "head.bias",
        "norm.weight",
    }
    assert all(p.ndim >= 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.05
    # the new head is zero-initialised (the paper's fine-tuning recipe)
    assert torch.count_nonzero(spec.model.head.weight) == 0


def test_freeze_backbone_trains_only_the_head(digits_root: Path, tmp_path: Path) -> None:
    config = tiny_config(
        digits_root, tmp_path / "run", freeze_backbone=True, optimizer="sgd", lr=0.1
    )
    spec = vit_model_spec(config, {i: str(i) for i in range(10)})
    before = {n: p.detach().clone() for n, p in spec.model.named_parameters()}
    train(config, model_factory=lambda cfg, labels: spec)
    for name, parameter in spec.model.named_parameters():
        changed = not torch.equal(before[name], parameter.detach().cpu())
        assert changed == name.startswith("head."), name


def test_gradient_accumulation_equals_the_full_batch(digits_root: Path, tmp_path: Path) -> None:
    weights = []
    for accum in (1, 4):
        config = tiny_config(
            digits_root, tmp_path / f"acc{accum}", grad_accum=accum, optimizer="sgd", lr=0.05
        )
        result = train(config)
        state = torch.load(result.out / "last.pt", weights_only=True)["model"]
        weights.append(state)
        first_step = next(r for r in result.history if r["type"] == "step")
        assert math.isfinite(first_step["loss"])
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], atol=1e-5, rtol=1e-4)


def test_nan_loss_stops_with_step_and_epoch(digits_root: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def exploding(outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = nn.functional.cross_entropy(outputs.logits, targets)
        return loss * float("nan") if calls["n"] == 3 else loss

    with pytest.raises(TrainingError, match=r"nan at step 3 \(epoch 1\)"):
        train(tiny_config(digits_root, tmp_path / "run"), loss_fn=exploding)


class TinyCNN(nn.Module):
    """A model that is not a ViT and returns bare logits: the trainer must not care."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, classes),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def test_any_module_with_its_own_loss_and_saver(digits_root: Path, tmp_path: Path) -> None:
    from torchvision.transforms import v2

    seen: list[tuple[int, ...]] = []

    def factory(cfg: TrainConfig, id2label: dict[int, str]) -> ModelSpec:
        def save(model: nn.Module, directory: Path) -> None:
            directory.mkdir(parents=True)
            torch.save(model.state_dict(), directory / "weights.pt")
            (directory / "labels.json").write_text(json.dumps(id2label))

        def load(directory: Path) -> nn.Module:
            model = TinyCNN(len(id2label))
            model.load_state_dict(torch.load(directory / "weights.pt"))
            return model

        evaluate = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        return ModelSpec(
            TinyCNN(len(id2label)), (8, 8), (0.0,) * 3, (1.0,) * 3, evaluate, save, load, "cnn"
        )

    def loss_fn(outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape))
        return nn.functional.cross_entropy(outputs, targets)

    config = tiny_config(digits_root, tmp_path / "run", epochs=2, lr=1e-2, batch_size=32)
    result = train(
        config,
        model_factory=factory,
        loss_fn=loss_fn,
        best_filter=lambda report: "vetoed" if report["macro_f1"] < 2 else None,
    )
    assert seen and seen[0] == (32, 3, 8, 8)
    # every epoch vetoed: nothing is kept as best, and the log says why
    assert result.best_epoch is None and not (result.out / "best").exists()
    epochs = [r for r in result.history if r["type"] == "epoch"]
    assert [r["not_best_because"] for r in epochs] == ["vetoed", "vetoed"]
    result = train(
        tiny_config(digits_root, tmp_path / "run2", lr=1e-2, batch_size=32), model_factory=factory
    )
    assert (result.out / "best" / "weights.pt").exists() and result.test is not None
    assert json.loads((result.out / "test" / "metrics.json").read_text())["num_samples"] == len(
        result.test.paths
    )


def test_bad_images_are_reported_up_front(digits_root: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_root, data)
    (data / "train" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (data / "test" / "5" / "empty.jpg").write_bytes(b"")
    with pytest.raises(vdata.DatasetError, match=r"2 unreadable image\(s\)") as error:
        train(tiny_config(data, tmp_path / "fail", on_bad_image="fail"))
    assert "broken.png" in str(error.value) and "empty.jpg" in str(error.value)
    result = train(tiny_config(data, tmp_path / "skip"))
    listed = (result.out / "bad_images.txt").read_text()
    assert "broken.png" in listed and "empty.jpg" in listed


def test_run_folder_outputs_and_refusal_to_overwrite(digits_root: Path, tmp_path: Path) -> None:
    result = train(tiny_config(digits_root, tmp_path / "run", epochs=2, balance="weighted-loss"))
    out = result.out
    for name in (
        "train_config.json",
        "split.json",
        "metrics.jsonl",
        "metrics.csv",
        "curves.png",
        "last.pt",
    ):
        assert (out / name).stat().st_size > 0, name
    for name in ("metrics.json", "confusion_matrix.json", "confusion_matrix.png"):
        assert (out / "test" / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    with pytest.raises(TrainingError, match="--resume"):
        train(tiny_config(digits_root, out))


def test_augmentation_is_independent_of_workers_and_caching(
    digits_root: Path, tmp_path: Path
) -> None:
    """Per-sample seeds: loader worker processes + disk reads give the very same training."""
    losses = []
    for workers, cache in ((0, "yes"), (2, "no")):
        config = tiny_config(
            digits_root,
            tmp_path / f"w{workers}",
            augment="seed",
            workers=workers,
            cache_images=cache,
            batch_size=128,
        )
        result = train(config)
        losses.append([r["loss"] for r in result.history if r["type"] == "step"])
    assert len(losses[0]) > 5 and losses[0] == losses[1]


def test_every_training_command_offers_every_augmentation_preset() -> None:
    from vitkit.cli import build_parser
    from vitkit.training.augment import AUGMENT_PRESETS, build_train_transform

    for preset in AUGMENT_PRESETS:  # every name the CLI offers builds a pipeline
        assert build_train_transform(preset, 8) is not None
    parser = build_parser()
    for command in (
        ["train", "--data", "d", "--out", "o"],
        ["distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o"],
    ):
        for preset in AUGMENT_PRESETS:
            assert parser.parse_args([*command, "--augment", preset]).augment == preset
    compare = ["compare", "--demo-data", "digits", "--out", "x", "--augment", "shift"]
    assert parser.parse_args(compare).augment == "shift"


def test_train_and_distill_offer_batch_mixing() -> None:
    from vitkit.cli import build_parser

    parser = build_parser()
    for command in (
        ["train", "--data", "d", "--out", "o"],
        ["distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o"],
    ):
        args = parser.parse_args([*command, "--mix", "cutmix", "--mix-alpha", "0.5"])
        assert (args.mix, args.mix_alpha) == ("cutmix", 0.5)
        assert parser.parse_args(command).mix is None  # unset: the recipe decides


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mix_batch_mixes_images_and_labels_alike(mode: str) -> None:
    """Image i holds the value i everywhere and has class i: a mixed image's mean value must be
    the mean class under its soft label, whatever the partner and the weight drawn."""
    from vitkit.training.augment import mix_batch

    batch = 8
    images = torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 16, 16)
    targets = torch.arange(batch)
    torch.manual_seed(0)
    mixed, soft = mix_batch(images, targets, batch, mode, alpha=1.0)
    assert mixed.shape == images.shape and soft.shape == (batch, batch)
    assert torch.allclose(soft.sum(dim=1), torch.ones(batch))
    assert ((soft > 0).sum(dim=1) <= 2).all()  # each image mixes with one partner at most
    classes = torch.arange(batch, dtype=torch.float32)
    expected = soft @ classes
    assert torch.allclose(mixed.mean(dim=(1, 2, 3)), expected, atol=1e-5)
    assert not torch.equal(mixed, images)  # it does mix
    torch.manual_seed(0)
    again, soft_again = mix_batch(images, targets, batch, mode, alpha=1.0)
    assert torch.equal(again, mixed) and torch.equal(soft_again, soft)  # seeded: reproducible
    if mode == "cutmix":  # a pasted box: every pixel comes whole from one of the two images
        assert all(set(m[0].unique().tolist()) <= set(classes.tolist()) for m in mixed)


def test_mix_none_returns_the_batch_with_one_hot_labels() -> None:
    from vitkit.training.augment import mix_batch

    images = torch.randn(4, 3, 8, 8)
    same, soft = mix_batch(images, torch.tensor([0, 2, 1, 2]), 3, "none")
    assert same is images
    assert torch.equal(soft, torch.eye(3)[[0, 2, 1, 2]])
    with pytest.raises(ValueError, match="mix mode"):
        mix_batch(images, torch.tensor([0, 2, 1, 2]), 3, "blend")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mix_batch(images, torch.tensor([0, 2, 1, 2]), 3, "cutmix", alpha=0)


def test_an_unknown_mix_is_refused_before_training(digits_root: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="unknown mix mode 'blend'"):
        train(tiny_config(digits_root, tmp_path / "run", mix="blend"))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_loss_and_the_model_see_the_same_mixed_batch(digits_root: Path, tmp_path: Path) -> None:
    """With --mix the model and loss_fn (hence a distillation teacher) get one and the same mixed
    batch, and the targets are soft labels that the default cross-entropy accepts."""
    seen: dict[str, list[torch.Tensor]] = {"model": [], "loss": [], "targets": []}

    def factory(cfg: TrainConfig, id2label: dict[int, str]) -> ModelSpec:
        spec = vit_model_spec(cfg, id2label)
        spec.model.register_forward_pre_hook(
            lambda module, args: (
                seen["model"].append(args[0].detach().clone()) if module.training else None
            )
        )
        return spec

    def loss_fn(outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        seen["loss"].append(images.detach().clone())
        seen["targets"].append(targets.detach().clone())
        return torch.nn.functional.cross_entropy(outputs.logits, targets)

    config = tiny_config(digits_root, tmp_path / "run", mix="mixup", batch_size=32)
    train(config, model_factory=factory, loss_fn=loss_fn)
    assert len(seen["loss"]) > 3 and len(seen["model"]) == len(seen["loss"])
    assert all(torch.equal(a, b) for a, b in zip(seen["model"], seen["loss"], strict=True))
    targets = torch.cat(seen["targets"])
    assert targets.shape[1] == 10 and torch.allclose(targets.sum(dim=1), torch.ones(len(targets)))
    # most labels are blends of two classes (a partner of the same class leaves a one-hot label)
    assert ((targets > 0) & (targets < 1)).any(dim=1).float().mean() > 0.7
    # a mixed image is no training image: the default loss trains on it too (no error)
    train(tiny_config(digits_root, tmp_path / "default", mix="cutmix"))
