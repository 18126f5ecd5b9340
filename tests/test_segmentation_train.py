"""Segmentation training on real pixels: masks checked before training, joint augmentation, the
task's loss and metrics against torchmetrics and segmentation_models_pytorch, and what training
saves read back by transformers (DPT) and by vitkit (a linear head on DINOv2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torchmetrics
import transformers
from PIL import Image

from vitkit.checkpoints import load_model
from vitkit.cli import main
from vitkit.errors import DatasetError
from vitkit.experiments.seg_datasets import IHC_LABELS, fashion_mosaics, ihc_stain_mask
from vitkit.images.masks import read_mask, write_mask
from vitkit.training import seg_data
from vitkit.training.config import TrainConfig
from vitkit.training.seg_augment import JointTrainTransform
from vitkit.training.seg_config import SegmentationSettings
from vitkit.training.seg_metrics import confusion_counts, segmentation_report
from vitkit.training.tasks.segment import SegmentationBuilder, soft_dice_loss
from vitkit.training.trainer import train


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST mosaics, 32x32 canvases: 24 train / 8 val / 8 test."""
    return fashion_mosaics(
        tmp_path_factory.mktemp("seg") / "mosaics", sizes=(24, 8, 8), canvas=32, items=(1, 2)
    )


def small_run(data: Path, out: Path, **changes: object) -> TrainConfig:
    settings: dict[str, object] = dict(
        data=str(data), out=str(out), epochs=1, batch_size=8, device="cpu", progress=False
    )
    settings.update(changes)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def test_vitkit_trained_dpt_loads_in_transformers(
    mosaics: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    vit = transformers.ViTModel(
        transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8,
        ),
        add_pooling_layer=True,
    )  # fmt: skip
    vit.save_pretrained(tmp_path / "vit")
    out = tmp_path / "run"
    argv = ["train", "--data", str(mosaics), "--out", str(out), "--model", str(tmp_path / "vit")]
    argv += ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress"]
    argv += ["--optimizer", "adamw", "--lr", "1e-3", "--seg-head", "dpt", "--dice-weight", "0.5"]
    argv += ["--layer-decay", "0.8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "ankle-boot" in printed  # the per-class table
    best = out / "best"
    reference = transformers.DPTForSemanticSegmentation.from_pretrained(best).eval()
    ours = load_model(best).model
    processor = transformers.AutoImageProcessor.from_pretrained(best)
    photos = [Image.open(p).convert("RGB") for p in sorted((mosaics / "test" / "images").iterdir())]
    pixels = processor(images=photos, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits
        assert torch.allclose(ours.forward_logits(pixels), expected, atol=1e-4, rtol=0)
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and metrics["num_samples"] == 8
    assert (out / "test" / "per_class_iou.png").stat().st_size > 1000
    # `vitkit eval` on the saved model and the test masks: the trainer's own test numbers
    assert (
        main(["eval", "--model", str(best), "--data", str(mosaics), "--out", str(out / "ev")]) == 0
    )
    evaluated = json.loads((out / "ev" / "metrics.json").read_text())
    assert evaluated["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-9)
    assert evaluated["per_class"] == metrics["per_class"]


def test_eval_report_equals_torchmetrics_on_transformers_predictions(
    mosaics: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vitkit eval` on a DPTForSemanticSegmentation that transformers saved: its metrics JSON,
    confusion matrix file, printed report and plots against torchmetrics on transformers' own
    predictions for the same test images and masks."""
    from test_segmentation_parity import calibrate_batch_norm, randomise

    labels = json.loads((mosaics / "labels.json").read_text())
    torch.manual_seed(0)
    model = transformers.DPTForSemanticSegmentation(
        transformers.DPTConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        )
    ).eval()  # fmt: skip
    processor = transformers.DPTImageProcessor(size={"height": 32, "width": 32})
    randomise(model, 1)
    calibrate_batch_norm(model, processor)  # several classes predicted, not one everywhere
    model.save_pretrained(tmp_path / "dpt")
    processor.save_pretrained(tmp_path / "dpt")
    out = tmp_path / "ev"
    argv = ["eval", "--model", str(tmp_path / "dpt"), "--data", str(mosaics), "--out", str(out)]
    assert main([*argv, "--device", "cpu"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    images = sorted((mosaics / "test" / "images").iterdir())
    photos = [Image.open(p).convert("RGB") for p in images]
    with torch.no_grad():
        outputs = model(**processor(images=photos, return_tensors="pt"))
    masks = [np.asarray(Image.open(mosaics / "test" / "masks" / p.name)) for p in images]
    predicted = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[mask.shape for mask in masks]
    )  # the logits (at 2x the input here) resized to the mask, then the arg-max
    predictions, targets = torch.stack(predicted), torch.from_numpy(np.stack(masks)).long()
    assert len(predictions.unique()) >= 3 and report["pixel_accuracy"] > 0
    matrix = json.loads((out / "confusion_matrix.json").read_text())
    assert matrix["labels"] == labels
    assert_report_equals_torchmetrics(report, matrix["matrix"], predictions, targets)
    printed = capsys.readouterr().out
    assert f"mIoU {report['mean_iou']:.4f}" in printed  # the report `vitkit eval` prints
    for picture in ("per_class_iou.png", "confusion_matrix.png"):
        assert Image.open(out / picture).size[0] > 200


def assert_report_equals_torchmetrics(
    report: dict[str, Any], confusion: list[list[int]], predictions: torch.Tensor,
    targets: torch.Tensor,
) -> None:  # fmt: skip
    """mIoU (over the classes present), per-class IoU / Dice, pixel accuracy and the confusion
    matrix of a report, as torchmetrics computes them from the predictions."""
    kwargs = dict(num_classes=len(report["labels"]), ignore_index=255)
    classes = torchmetrics.classification
    matrix = classes.MulticlassConfusionMatrix(**kwargs)(predictions, targets)
    assert confusion == matrix.tolist()
    present = (matrix.sum(0) + matrix.sum(1)) > 0
    iou = classes.MulticlassJaccardIndex(average="none", **kwargs)(predictions, targets)
    dice = classes.MulticlassF1Score(average="none", **kwargs)(predictions, targets)
    for index, label in enumerate(report["labels"]):
        row = report["per_class"][label]
        if present[index]:
            assert row["iou"] == pytest.approx(float(iou[index]), abs=1e-6)
            assert row["dice"] == pytest.approx(float(dice[index]), abs=1e-6)
        else:
            assert row["iou"] is None and row["dice"] is None
    assert report["mean_iou"] == pytest.approx(float(iou[present].mean()), abs=1e-6)
    assert report["mean_dice"] == pytest.approx(float(dice[present].mean()), abs=1e-6)
    accuracy = classes.MulticlassAccuracy(average="micro", **kwargs)(predictions, targets)
    assert report["pixel_accuracy"] == pytest.approx(float(accuracy), abs=1e-6)


def test_segmentation_options_refused_for_class_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data" / "cat").mkdir(parents=True)
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    assert main([*argv, "--seg-head", "linear", "--from-scratch"]) == 2
    assert "--seg-head: segmentation options" in capsys.readouterr().err


def test_layer_decay_scales_each_blocks_learning_rate() -> None:
    from vitkit.models.config import ViTConfig
    from vitkit.models.segmentation import Segmenter, SegmenterConfig
    from vitkit.training.model_spec import ModelSpec
    from vitkit.training.tasks.segment import SegmentationTask
    from vitkit.training.trainer import build_optimizer

    backbone = ViTConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        image_size=16, patch_size=4,
    )  # fmt: skip
    model = Segmenter(SegmenterConfig(backbone=backbone, head="linear", id2label={0: "a", 1: "b"}))
    spec = ModelSpec(model, (16, 16), (0.5,) * 3, (0.5,) * 3, lambda x: x, lambda m, d: None)
    task = SegmentationTask(spec, ["a", "b"], SegmentationSettings(layer_decay=0.5))
    cfg = TrainConfig(data="x", out="y", optimizer="adamw", lr=1.0)
    optimizer = build_optimizer(model, cfg, lr_scale=task.lr_scale)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["decoder.classifier.weight"])] == 1.0
    assert lr_of[id(named["backbone.blocks.3.mlp.fc1.weight"])] == 0.5
    assert lr_of[id(named["backbone.blocks.0.attn.qkv.weight"])] == 0.5**4
    assert lr_of[id(named["backbone.patch_embed.proj.weight"])] == 0.5**5


def test_linear_head_on_dinov2_trains_and_reloads(mosaics: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
        image_size=28, patch_size=14,
    )  # fmt: skip
    dinov2 = transformers.Dinov2Model(config).eval()
    dinov2.save_pretrained(tmp_path / "dinov2")
    cfg = small_run(
        mosaics, tmp_path / "run", model=str(tmp_path / "dinov2"), image_size=28,
        freeze_backbone=True, epochs=2, lr=0.05,
    )  # fmt: skip
    settings = SegmentationSettings(seg_head="linear", linear_layers=2)
    result = train(cfg, SegmentationBuilder(settings))
    epochs = [row for row in result.history if row.get("type") == "epoch"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]  # it learned
    loaded = load_model(result.out / "best")
    assert loaded.model_type == "vitkit_segmenter" and loaded.model.config.backbone_type == "dinov2"
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():  # the frozen backbone is still transformers' Dinov2Model
        tokens = loaded.model.backbone(pixels).last_hidden_state
        expected = dinov2(pixel_values=pixels).last_hidden_state
    assert torch.allclose(tokens, expected, atol=1e-5)
    # the head reloads as trained: the reloaded model scores the test masks as the trainer did
    assert result.test is not None
    out = tmp_path / "ev"
    assert (
        main(
            ["eval", "--model", str(result.out / "best"), "--data", str(mosaics), "--out", str(out)]
        )
        == 0
    )
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["per_class"] == result.test.report["per_class"]
    assert evaluated["mean_iou"] == pytest.approx(result.test.report["mean_iou"], abs=1e-9)


def test_masks_that_do_not_fit_are_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "labels.txt").write_text("background\ntumour\n")
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    for name, mask in {
        "ok": np.zeros((16, 16)),
        "small": np.zeros((8, 16)),
        "values": np.full((16, 16), 7),
    }.items():
        Image.fromarray(image).save(data / "images" / f"{name}.png")
        write_mask(mask.astype(np.uint8), data / "masks" / f"{name}.png")
    splits = seg_data.read_mask_splits(data, None, 0.34, 0)
    samples = splits.train + splits.val
    with pytest.raises(DatasetError) as error:
        seg_data.scan_masks(samples, splits.classes, keep=False)  # type: ignore[arg-type]
    message = str(error.value)
    assert "2 mask(s) do not fit" in message
    assert str(data / "masks" / "small.png") in message and "8" in message
    assert str(data / "masks" / "values.png") in message and "[7]" in message
    # `vitkit train` names them all, whichever split each fell in, before any training
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--from-scratch", "--image-size", "16"]
    argv += ["--preset", "vit-tiny-patch8-64", "--batch-size", "1", "--val-fraction", "0.34"]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 1
    printed = capsys.readouterr().err
    assert "2 mask(s) do not fit" in printed and "small.png" in printed and "values.png" in printed
    assert not (out / "last.pt").exists() and not (out / "metrics.jsonl").exists()
    Image.fromarray(image).save(data / "masks" / "ok.png")  # RGB: colours are not classes
    with pytest.raises(DatasetError, match=r"ok\.png: a RGB image, not a mask"):
        read_mask(data / "masks" / "ok.png")


def test_joint_augmentation_moves_the_mask_with_the_image() -> None:
    from skimage import data

    mask = ihc_stain_mask(data.immunohistochemistry())[:96, :96]
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    painted = colours[mask]  # each class its own colour: the mask can be read off the pixels
    transform = JointTrainTransform("seed", (96, 96), mean=(0, 0, 0), std=(1, 1, 1))
    transform.pipeline.transforms = [  # colour jitter would hide the classes' colours
        t for t in transform.pipeline.transforms if type(t).__name__ != "ColorJitter"
    ]
    changed = 0
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, moved = transform(painted, mask)
        assert moved.dtype == torch.uint8 and moved.shape == (96, 96)
        changed += not np.array_equal(moved.numpy(), mask)
        distances = ((pixels.permute(1, 2, 0).numpy()[..., None, :] * 255 - colours) ** 2).sum(-1)
        read_off = distances.argmin(-1)
        assert (read_off == moved.numpy()).mean() > 0.93  # all but the resampled borders
    assert changed >= 6  # flips, quarter turns and crops happened


def test_metrics_equal_torchmetrics() -> None:
    generator = np.random.default_rng(0)
    targets = generator.integers(0, 4, size=(6, 20, 20))
    targets[:, :3] = 255  # not labelled
    predictions = np.where(
        generator.random(targets.shape) < 0.6, targets % 4, generator.integers(0, 4, targets.shape)
    )
    report = segmentation_report(confusion_counts(targets, predictions, 4), ["a", "b", "c", "d"])
    truth, guess = torch.from_numpy(targets), torch.from_numpy(predictions)
    kwargs = dict(num_classes=4, ignore_index=255)
    iou = torchmetrics.classification.MulticlassJaccardIndex(average="none", **kwargs)(guess, truth)
    dice = torchmetrics.classification.MulticlassF1Score(average="none", **kwargs)(guess, truth)
    accuracy = torchmetrics.classification.MulticlassAccuracy(average="micro", **kwargs)(
        guess, truth
    )
    matrix = torchmetrics.classification.MulticlassConfusionMatrix(**kwargs)(guess, truth)
    assert np.allclose([report["per_class"][c]["iou"] for c in "abcd"], iou.numpy(), atol=1e-6)
    assert np.allclose([report["per_class"][c]["dice"] for c in "abcd"], dice.numpy(), atol=1e-6)
    assert report["mean_iou"] == pytest.approx(float(iou.mean()), abs=1e-6)
    assert report["pixel_accuracy"] == pytest.approx(float(accuracy), abs=1e-6)
    assert report["confusion_matrix"] == matrix.tolist()


def test_dice_loss_equals_segmentation_models_pytorch() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 12, 12, generator=generator)
    targets = torch.randint(0, 4, (3, 12, 12), generator=generator)  # class 4 never present
    targets[:, 0] = 255
    reference = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=255)
    assert soft_dice_loss(logits, targets, 255) == pytest.approx(
        float(reference(logits, targets)), abs=1e-6
    )


def test_rare_classes_are_oversampled() -> None:
    presence = np.zeros((20, 3), dtype=bool)
    presence[:, 0] = True  # background everywhere
    presence[:10, 1] = True  # half the images
    presence[:2, 2] = True  # a rare class: 10%
    factors = seg_data.repeat_factors(presence)
    assert factors[:2] == pytest.approx([np.sqrt(10)] * 2)
    assert factors[2:10] == pytest.approx([np.sqrt(2)] * 8) and factors[10:].max() == 1.0
    indices = seg_data.oversample_rare(presence, seed=0)
    assert indices.count(0) in (3, 4) and indices.count(19) == 1
    assert IHC_LABELS == ["background", "hematoxylin", "DAB"]


def test_settings_name_the_heads_the_model_has() -> None:
    from vitkit.models.segmentation import HEADS
    from vitkit.training.seg_config import SEGMENTATION_HEADS

    assert SEGMENTATION_HEADS == HEADS
    with pytest.raises(ValueError, match="--class-weights"):
        SegmentationSettings(class_weights=["1", "x"])


def test_compare_on_masks_is_a_segmentation_comparison(mosaics: Path, tmp_path: Path) -> None:
    from vitkit.experiments import compare
    from vitkit.experiments.compare_config import CompareConfig
    from vitkit.training.specs import resnet_model_spec

    cfg = CompareConfig(data=str(mosaics), out=str(tmp_path), rows=["baseline", "scratch"])
    assert compare.scores_for(cfg).metrics == ("mean_iou", "mean_dice", "pixel_accuracy")
    baseline = compare.task_for(cfg, resnet_model_spec("resnet18", None))
    vit = compare.task_for(cfg)
    assert isinstance(baseline, SegmentationBuilder) and isinstance(vit, SegmentationBuilder)
    assert baseline.model_factory is not vit.model_factory and vit.settings.seg_head == "dpt"
    spec = baseline.model_factory(
        TrainConfig(data=str(mosaics), out=str(tmp_path), image_size=32),
        SegmentationSettings(),
        {0: "background", 1: "bag"},
    )
    assert isinstance(spec.model, smp.Unet) and spec.image_size == (32, 32)
    assert compare._training_images(cfg) == mosaics / "train" / "images"
    with pytest.raises(Exception, match="--rows distilled"):
        compare._check_data(CompareConfig(data=str(mosaics), out=str(tmp_path), rows=["distilled"]))
