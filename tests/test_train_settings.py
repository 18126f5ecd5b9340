"""Settings: impossible ones refused up front in one line; options generated from the config
dataclasses; a crafted last.pt refused on --resume; the recipe a run gets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitkit.cli import build_parser, main
from vitkit.cli._options import config_from_args
from vitkit.experiments.compare_config import CompareConfig
from vitkit.experiments.demo_data import build_demo_folder
from vitkit.training.config import RECIPES, DistillConfig, TrainConfig, resolve_recipe

TINY = [
    "--from-scratch", "--preset", "vit-tiny-patch4-8", "--model-arg", "hidden_size=16",
    "--model-arg", "num_hidden_layers=1", "--model-arg", "num_attention_heads=2",
    "--model-arg", "intermediate_size=32", "--no-progress", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_folder(tmp_path_factory.mktemp("digits") / "data", size=8, minority=8).root


@pytest.fixture(scope="module")
def one_class(tmp_path_factory: pytest.TempPathFactory, digits: Path) -> Path:
    root = tmp_path_factory.mktemp("one") / "data"
    shutil.copytree(digits / "train" / "3", root / "3")
    return root


@pytest.fixture(scope="module")
def other_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT whose classes are not the digits'."""
    from vitkit.checkpoints import save_pretrained
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    config = preset(
        "vit-tiny-patch4-8", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, id2label={0: "cat", 1: "dog"},
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("teacher") / "vit"
    save_pretrained(ViT(config), directory)
    return directory


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 1, " ".join(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_impossible_settings_are_refused_in_one_line_before_any_work(
    digits: Path,
    one_class: Path,
    other_teacher: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    train = ["train", "--data", str(digits), "--out", str(out)]
    cases: list[tuple[list[str], str]] = [
        # the example: 28x28 input, default preset's patch 16
        (["train", "--data", str(digits), "--out", str(out), "--from-scratch", "--image-size", "28"],
         "--image-size 16 or 32"),
        ([*train, *TINY, "--image-size", "10"], "not a multiple of the patch size 4"),
        ([*train, *TINY, "--batch-size", "100000"], "larger than the training set"),
        ([*train, *TINY, "--batch-size", "30", "--grad-accum", "4"], "multiple of processes x --grad-accum"),
        ([*train, *TINY, "--device", "tpu"], "unknown device"),
        ([*train, *TINY, "--preset", "vit-gigantic-patch4-8"], "unknown ViT preset"),
        ([*train, *TINY, "--model-arg", "hidden_size=15"], "not divisible"),
        ([*train, *TINY, "--model-arg", "colour=blue"], "--model-arg takes ViTConfig fields"),
        ([*train, *TINY, "--model-arg", "hidden_size"], "expected KEY=VALUE"),
        ([*train, *TINY, "--model", "some/ckpt"], "exclude each other"),
        (train, "name a checkpoint to fine-tune with --model"),
        ([*train, *TINY, "--lr", "0"], "--lr 0.0"),
        ([*train, *TINY, "--epochs", "0"], "--epochs 0"),
        ([*train, *TINY, "--val-fraction", "1.5"], "--val-fraction 1.5"),
        ([*train, *TINY, "--label-smoothing", "1"], "--label-smoothing 1.0"),
        ([*train, *TINY, "--mix", "cutmix", "--mix-alpha", "0"], "mix alpha must be > 0"),
        ([*train, *TINY, "--warmup-fraction", "2"], "--warmup-fraction 2.0"),
        ([*train, *TINY, "--momentum", "1"], "--momentum 1.0"),
        ([*train, *TINY, "--workers", "-1"], "--workers -1"),
        (["train", "--data", str(tmp_path / "nowhere"), "--out", str(out), *TINY], "no such file or folder"),
        (["train", "--data", str(one_class), "--out", str(out), *TINY], "at least 2"),
        (["train", "--data", __file__, "--out", str(out), *TINY], "this task reads an image folder"),
        ([*train, "--model", str(tmp_path / "missing-checkpoint")], "no such file or directory"),
        (["distill", "--teacher", str(other_teacher), "--student", "vit-tiny-patch4-8",
          "--data", str(digits), "--out", str(out), "--no-progress", "--device", "cpu"],
         "differ from the data's classes"),
        (["distill", "--teacher", str(other_teacher), "--student", "vit-tiny-patch16-224",
          "--image-size", "28", "--data", str(digits), "--out", str(out)], "patch size 16"),
        (["distill", "--teacher", str(other_teacher), "--student", "vit-tiny-patch4-8",
          "--alpha", "2", "--data", str(digits), "--out", str(out)], "--alpha 2.0"),
        (["distill", "--teacher", str(other_teacher), "--student", "vit-tiny-patch4-8",
          "--temperature", "0", "--data", str(digits), "--out", str(out)], "--temperature 0.0"),
        (["distill", "--teacher", str(other_teacher), "--student", "vit-tiny-patch4-8",
          "--model", "x", "--data", str(digits), "--out", str(out)], "drop --model"),
        (["compare", "--data", str(digits), "--out", str(out), "--rows", "baseline,transformer"],
         "unknown row(s)"),
        (["compare", "--demo-data", "digits", "--out", str(out), "--image-size", "18"],
         "patch size 4"),
        (["compare", "--demo-data", "digits", "--out", str(out), "--high-image-size", "30"],
         "(--high-image-size)"),
        (["compare", "--demo-data", "digits", "--out", str(out), "--distill-alpha", "-1"],
         "--distill-alpha -1.0"),
        (["compare", "--demo-data", "digits", "--out", str(out), "--pretrained", str(tmp_path / "no")],
         "--pretrained"),
        (["compare", "--demo-data", "digits", "--out", str(out), "--batch-size", "0"],
         "--batch-size 0"),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append(([*train, *TINY, "--device", "cuda"], "no CUDA device here; use --device cpu"))
    for argv, expected in cases:
        shutil.rmtree(out, ignore_errors=True)  # each case starts from a fresh run folder
        err = _refused(argv, capsys)
        assert expected in err, (argv, err)
        # nothing was trained: no state, no model, no demo data built
        assert not (out / "last.pt").exists() and not (out / "best").exists(), argv
        assert not (out / "data").exists(), argv


def test_a_crafted_last_pt_is_refused_and_never_runs(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last.pt whose pickle would run a command: --resume refuses it, the command never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"format": "vitkit-training-state", "model": Exploit()}, out / "last.pt")
    argv = ["train", "--data", str(digits), "--out", str(out), *TINY, "--resume"]
    err = _refused(argv, capsys)
    assert "refused to resume" in err and str(out / "last.pt") in err
    assert not marker.exists()
    # the file is what it claims: unpickled the unsafe way, it runs the command
    torch.load(out / "last.pt", weights_only=False)
    assert marker.exists()


def test_every_option_comes_from_the_config_and_round_trips() -> None:
    """Parsing no optional flag gives the dataclass defaults; the old flags still parse."""
    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o"])
    assert config_from_args(TrainConfig, args) == TrainConfig(data="d", out="o")
    old_style = [
        "train", "--data", "d", "--out", "o", "-m", "ckpt", "--model-arg", "hidden_size=64",
        "--model-arg", "qkv_bias=false", "-b", "32", "--optimizer", "adamw", "--lr", "2e-3",
        "--no-progress", "--warmup-steps", "5", "--resume", "--freeze-backbone",
    ]  # fmt: skip
    cfg = config_from_args(TrainConfig, parser.parse_args(old_style))
    assert cfg.model == "ckpt" and cfg.model_overrides == {"hidden_size": 64, "qkv_bias": False}
    assert (cfg.batch_size, cfg.optimizer, cfg.lr, cfg.warmup_steps) == (32, "adamw", 2e-3, 5)
    assert cfg.progress is False and cfg.resume and cfg.freeze_backbone
    distill = parser.parse_args(
        ["distill", "--teacher", "t", "--student", "s", "--data", "d", "--out", "o"]
    )
    assert config_from_args(DistillConfig, distill) == DistillConfig(teacher="t", student="s")
    demo = parser.parse_args(["demo"])
    assert (demo.epochs, demo.balance, demo.device, demo.progress) == (
        12,
        "oversample",
        "cpu",
        True,
    )
    compare = parser.parse_args(["compare", "--data", "d", "--out", "o"])
    assert config_from_args(CompareConfig, compare, data="d") == CompareConfig(data="d", out="o")
    help_text = " ".join(  # argparse wraps lines
        parser._subparsers._group_actions[0].choices["train"].format_help().split()  # type: ignore[union-attr]
    )
    assert "(default: 64)" in help_text and "sgd fine-tuning, adamw from scratch" in help_text


def test_help_and_parsing_import_no_torch() -> None:
    code = (
        "import sys; from vitkit.cli import build_parser; "
        "build_parser().parse_args(['train', '--data', 'd', '--out', 'o']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_from_scratch_gets_its_recipe_and_the_plan_says_so(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scratch = resolve_recipe(TrainConfig(data="d", out="o", from_scratch=True, lr=5e-4))
    fine = resolve_recipe(TrainConfig(data="d", out="o", model="m"))
    recipe = RECIPES["from-scratch"]
    assert (scratch.optimizer, scratch.augment, scratch.label_smoothing) == (
        recipe.optimizer,
        recipe.augment,
        recipe.label_smoothing,
    )
    assert scratch.lr == 5e-4  # what the user sets wins
    assert (fine.optimizer, fine.augment, fine.mix) == ("sgd", "natural", "none")
    assert recipe.augment in ("shift", "none")  # no flips: they change what digits mean
    assert (
        scratch.mix == recipe.mix
        and fine.lr == 0.01
        and resolve_recipe(TrainConfig(data="d", out="o", from_scratch=True, optimizer="sgd")).lr
        == 0.01
    )  # another optimiser than the recipe's: its own default learning rate
    argv = ["train", "--data", str(digits), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1"]
    assert main([*argv, "--lr", "5e-4"]) == 0
    err = capsys.readouterr().err
    assert "recipe: from-scratch: adamw" in err and f"augment {recipe.augment}" in err
    assert "yours: lr 0.0005" in err
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["optimizer"] == "adamw" and saved["augment"] == recipe.augment


def test_fine_tune_a_timm_file_whose_head_count_needs_model_arg(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model-arg with --model gives what the file does not record (timm state dicts carry no
    head count); without it the run stops up front, naming the option."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    odd_width = timm.create_model(
        "vit_small_patch16_224", pretrained=False, embed_dim=40, num_heads=5, depth=1,
        img_size=16, patch_size=4, num_classes=3,
    )  # fmt: skip
    weights = tmp_path / "width40.safetensors"
    save_file({k: v.contiguous() for k, v in odd_width.state_dict().items()}, str(weights))
    train = ["train", "--data", str(digits), "--model", str(weights), "--image-size", "8"]
    train += ["--epochs", "1", "--batch-size", "16", "--no-progress", "--device", "cpu"]
    message = _refused([*train, "--out", str(tmp_path / "refused")], capsys)
    assert "--model-arg num_attention_heads=N" in message
    out = tmp_path / "run"
    assert main([*train, "--out", str(out), "--model-arg", "num_attention_heads=5"]) == 0
    saved = json.loads((out / "best" / "config.json").read_text())
    assert saved["num_attention_heads"] == 5 and saved["image_size"] == 8
    assert len(saved["id2label"]) == len(list((digits / "train").iterdir()))
