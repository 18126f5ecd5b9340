"""`vitkit compare` end to end on a small unbalanced digits folder: table, chart, reuse, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitkit.experiments.compare import CompareConfig, CompareError, compare

TINY_VIT = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
}


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real digits 0, 1, 2 as 16x16 PNGs; class 2 cut to 30% of its training images."""
    from vitkit.experiments.demo_data import load_digits_arrays, write_image_folder

    images, labels, _ = load_digits_arrays()
    keep = labels <= 2
    root = tmp_path_factory.mktemp("digits3")
    write_image_folder(
        root,
        images[keep],
        labels[keep],
        ["zero", "one", "two"],
        size=16,
        minority=2,
        minority_fraction=0.3,
    )
    return root


@pytest.fixture(scope="module")
def pretrained_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT checkpoint of the rows' size, saved in HF format (stands in for --pretrained)."""
    from vitkit.checkpoints import save_pretrained
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    model = ViT(preset("vit-tiny-patch4-16", **TINY_VIT, id2label={0: "x", 1: "y"}))
    directory = tmp_path_factory.mktemp("pretrained") / "vit"
    save_pretrained(model, directory)
    return directory


def _config(data: Path, out: Path, pretrained: Path, **changes: object) -> CompareConfig:
    cfg = CompareConfig(
        data=str(data),
        out=str(out),
        rows=["baseline", "finetune224", "distilled"],  # scratch: the same code path as finetune
        pretrained=str(pretrained),
        vit_overrides=dict(TINY_VIT),
        epochs=2,
        baseline_epochs=2,
        batch_size=64,
        progress=False,
    )
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_compare_writes_the_table_and_reuses_finished_rows(
    digits_folder: Path, pretrained_vit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    results = compare(_config(digits_folder, out, pretrained_vit))
    assert [r.row for r in results] == ["baseline", "finetune224", "distilled"]
    for result in results:
        if result.report is None:  # only a collapsed distillation may lack a test report
            assert result.row == "distilled" and any("COLLAPSED" in n for n in result.notes)
            continue
        assert result.report["num_samples"] == sum(
            len(list((digits_folder / "test" / c).iterdir())) for c in ("zero", "one", "two")
        )
        assert 0.0 <= result.report["macro_f1"] <= 1.0
        assert (out / "confusion" / f"{result.row}.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert "resnet18 (CNN baseline)" in table and "ViT fine-tuned @16" in table
    assert f"fine-tune rows start from {pretrained_vit}" in table
    assert "trained here: baseline, distilled, finetune224" in table  # with its wall/CPU time
    # only the distilled row mixes its batches (function matching); the table says so
    mixes = {
        row: json.loads((out / "rows" / row / "train_config.json").read_text())["mix"]
        for row in ("baseline", "finetune224", "distilled")
    }
    assert mixes == {"baseline": "none", "finetune224": "none", "distilled": "cutmix"}
    assert "every batch mixed (cutmix, alpha 1)" in table
    assert all(r.cpu_seconds is not None and r.cpu_seconds > 0 for r in results)
    with open(out / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["row"] for r in rows] == ["baseline", "finetune224", "distilled"]
    baseline = results[0].report
    assert baseline is not None
    assert float(rows[0]["macro_f1"]) == pytest.approx(baseline["macro_f1"])
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    # the distilled student is a DeiT-with-teacher directory whose two heads were both trained
    from vitkit.checkpoints.hf_deit import load_student

    if results[-1].report is not None:
        student, _ = load_student(out / "rows" / "distilled" / "best")
        assert student.head_dist.weight.abs().sum() > 0

    # a second run reuses every finished row: nothing is trained again
    stamps = {r.row: (out / "rows" / r.row / "last.pt").stat().st_mtime_ns for r in results}
    capsys.readouterr()
    (
        out / "rows" / "distilled" / "result.json"
    ).unlink()  # as if killed after training, before the marker
    again = compare(_config(digits_folder, out, pretrained_vit))
    log = capsys.readouterr().err
    assert log.count("finished earlier, reusing") == 2
    assert "trained here: distilled" in (out / "table.md").read_text()  # resumed, not reused
    assert {r.row: (out / "rows" / r.row / "last.pt").stat().st_mtime_ns for r in again} == stamps
    assert [r.report["macro_f1"] if r.report else None for r in again] == [
        r.report["macro_f1"] if r.report else None for r in results
    ]

    with pytest.raises(CompareError, match=r"other settings.*epochs"):
        compare(_config(digits_folder, out, pretrained_vit, epochs=3))


def test_compare_refuses_data_without_a_test_split(tmp_path: Path, pretrained_vit: Path) -> None:
    (tmp_path / "flat" / "a").mkdir(parents=True)
    with pytest.raises(CompareError, match="needs train/ and test/"):
        compare(_config(tmp_path / "flat", tmp_path / "out", pretrained_vit))
    with pytest.raises(CompareError, match="unknown row"):
        CompareConfig(data="x", out="y", rows=["baseline", "transformer-xl"])


def test_without_pretrained_the_fine_tune_rows_start_from_an_mae_on_the_training_images(
    digits_folder: Path, tmp_path: Path
) -> None:
    from vitkit.checkpoints import load_model

    out = tmp_path / "mae-start"
    cfg = _config(digits_folder, out, digits_folder, rows=["finetune224"], pretrain_epochs=1)
    cfg.pretrained = None
    (result,) = compare(cfg)
    pretrain_run = out / "rows" / "pretrain"
    assert load_model(pretrain_run / "best").model_type == "vit_mae"
    split = json.loads((pretrain_run / "split.json").read_text())
    seen = {name for name, _ in split["train"] + split["val"]}
    train_images = {
        str(p.relative_to(digits_folder / "train"))
        for p in (digits_folder / "train").rglob("*.png")
    }
    assert seen == train_images  # every training image, no test image
    assert "from the MAE pre-training" in result.title
    table = (out / "table.md").read_text()
    assert "masked autoencoder" in table and "labels unused" in table
    assert (pretrain_run / "reconstructions" / "epoch_001.png").is_file()


def test_shift_augmentation_moves_a_digit_a_little_and_never_flips_it() -> None:
    """The ViT rows' default augmentation: small shifts/rotations/scalings on a real digit."""
    from PIL import Image

    from vitkit.experiments.demo_data import load_digits_arrays
    from vitkit.training.augment import build_train_transform

    images, labels, _ = load_digits_arrays()
    digit = Image.fromarray(images[np.flatnonzero(labels == 7)[0]]).resize(
        (16, 16), Image.Resampling.BICUBIC
    )
    shift = build_train_transform("shift", 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    plain = build_train_transform("none", 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(digit)

    def ink(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = (pixels[0] + 1) / 2  # back to [0, 1]: ink is bright on black
        rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        total = weights.sum()
        return total, torch.stack([(weights * rows).sum(), (weights * cols).sum()]) / total

    plain_total, plain_centre = ink(plain)
    torch.manual_seed(0)
    outputs = [shift(digit) for _ in range(40)]
    assert all(o.shape == (3, 16, 16) and o.dtype == torch.float32 for o in outputs)
    assert sum(not torch.allclose(o, plain) for o in outputs) >= 35  # it does augment
    moves = []
    for out in outputs:
        total, centre = ink(out)
        moves.append(float((centre - plain_centre).norm()))
        # scale 0.9-1.1: ink area within about 0.81-1.21x (plus interpolation and a cut edge)
        assert 0.6 * plain_total < total < 1.4 * plain_total
    # at most 2 pixels of shift each way (plus a little rotation/scale about the centre)
    assert max(moves) < 3.5 and np.mean(moves) > 0.3
    # orientation carries the meaning of a digit (a flipped 6 is no 6): no flips, no quarter turns
    from torchvision.transforms import v2

    from vitkit.training.augment import RandomRotate90

    turns = (v2.RandomHorizontalFlip, v2.RandomVerticalFlip, RandomRotate90)
    assert not any(isinstance(step, turns) for step in shift.transforms)


def test_compare_command_builds_the_library_defaults() -> None:
    """The options are generated from CompareConfig: parsing nothing gives its defaults."""
    from vitkit.cli import build_parser
    from vitkit.cli._options import config_from_args

    args = build_parser().parse_args(["compare", "--demo-data", "digits", "--out", "x"])
    assert config_from_args(CompareConfig, args, data="d") == CompareConfig(data="d", out="x")
    args = build_parser().parse_args(
        [
            "compare",
            "--data",
            "d",
            "--out",
            "x",
            "--rows",
            "scratch,baseline",
            "--vit-arg",
            "hidden_size=32",
        ]
    )
    cfg = config_from_args(CompareConfig, args, data="d")
    assert cfg.rows == ["baseline", "scratch"] and cfg.vit_overrides == {"hidden_size": 32}
