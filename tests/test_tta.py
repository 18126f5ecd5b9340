"""Test-time augmentation: d4 equals the mean of the 8 explicit predictions, in one forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import build_parser, main
from vitkit.errors import TTAError, VitkitError
from vitkit.inference import tta
from vitkit.models.config import ViTConfig
from vitkit.models.vit import ViT

# PIL's transposes that make the 8 orientations of an image (the dihedral group D4)
D4_EXPLICIT = [
    [],
    [Image.Transpose.ROTATE_90],
    [Image.Transpose.ROTATE_180],
    [Image.Transpose.ROTATE_270],
    [Image.Transpose.FLIP_LEFT_RIGHT],
    [Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90],
    [Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_180],
    [Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_270],
]


def oriented(image: Image.Image, transposes: list[Image.Transpose]) -> Image.Image:
    for transpose in transposes:
        image = image.transpose(transpose)
    return image


def square_photos(photo_dir: Path, size: int = 64) -> list[Image.Image]:
    """Real photos cropped square at the model's input size.

    At another size the resize runs on uint8 pixels, one axis after the other with rounding in
    between, so the resize of a turned image differs from the turned resize by one grey level
    here and there (~1e-3 in probability): the views are exact, that comparison would not be.
    """
    photos = []
    for name in ("chelsea", "coffee", "histology"):
        image = Image.open(photo_dir / f"{name}.jpg").convert("RGB")
        side = min(image.size)
        photos.append(image.crop((0, 0, side, side)).resize((size, size)))
    return photos


def test_d4_equals_the_mean_of_eight_explicit_predictions(
    tiny_hf_classifier: Path, photo_dir: Path
) -> None:
    plain = vitkit.load(tiny_hf_classifier)
    averaged = vitkit.load(tiny_hf_classifier, tta="d4")
    images = square_photos(photo_dir)
    explicit = torch.stack(
        [
            plain.probabilities(plain.prepare([oriented(image, t) for image in images]))
            for t in D4_EXPLICIT
        ]
    ).mean(dim=0)
    pixels = averaged.prepare(images)
    ours = averaged.probabilities(pixels)
    assert (ours - explicit).abs().max().item() < 1e-6
    # and the answers are the averaged probabilities, not one view's
    assert (ours - plain.probabilities(pixels)).abs().max().item() > 1e-4
    top = averaged.predict(images, top_k=1)
    assert [a[0]["label"] for a in top] == [plain.labels[i] for i in explicit.argmax(-1).tolist()]


def test_every_mode_is_one_forward_over_all_views(tiny_hf_classifier: Path) -> None:
    pixels = torch.randn(3, 3, 64, 64)
    for mode in tta.TTA_MODES:
        classifier = vitkit.load(tiny_hf_classifier, tta=mode)
        calls: list[int] = []
        forward = classifier._forward  # the runtime's batched call (it may split across cores)

        def counting(batch: torch.Tensor, forward=forward, calls=calls) -> torch.Tensor:
            calls.append(batch.shape[0])
            return forward(batch)

        classifier._forward = counting
        classifier.probabilities(pixels)
        assert calls == [3 * tta.num_views(mode)]
        views = tta.views(pixels, mode)
        # each view is an orientation of the same images, no two alike
        distinct = {
            tuple(views[i * 3 : (i + 1) * 3].flatten()[:50].tolist())
            for i in range(len(views) // 3)
        }
        assert len(distinct) == tta.num_views(mode)
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]  # type: ignore[union-attr]
    tta_option = next(a for a in predict._actions if "--tta" in a.option_strings)
    assert tuple(tta_option.choices or ()) == tta.TTA_MODES  # the CLI offers every mode, no other


def test_embeddings_average_the_views(tiny_hf_feature_extractor: Path) -> None:
    pixels = torch.randn(2, 3, 64, 64)
    plain = vitkit.load(tiny_hf_feature_extractor)
    flipped = vitkit.load(tiny_hf_feature_extractor, tta="flip")
    expected = (
        plain.embed_tensor(pixels, "pooler") + plain.embed_tensor(pixels.flip(-1), "pooler")
    ) / 2
    assert torch.allclose(flipped.embed_tensor(pixels, "pooler"), expected, atol=1e-6)
    with pytest.raises(VitkitError, match="tokens"):
        flipped.embed_tensor(pixels, "tokens")


def test_quarter_turns_need_a_square_input_and_modes_are_checked() -> None:
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=(32, 48), patch_size=16, num_labels=2,
    )  # fmt: skip
    classifier = vitkit.Classifier(ViT(config), tta="rot90")
    with pytest.raises(TTAError, match="square"):
        classifier.probabilities(torch.randn(1, 3, 32, 48))
    assert vitkit.Classifier(ViT(config), tta="flip").probabilities(
        torch.randn(1, 3, 32, 48)
    ).shape == (1, 2)
    with pytest.raises(TTAError, match="d4"):
        vitkit.Classifier(ViT(config), tta="d8")


def test_cli_predict_and_embed_take_tta(
    tiny_hf_classifier: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = square_photos(photo_dir)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    assert (
        main(["predict", "-m", str(tiny_hf_classifier), "--tta", "d4", "-f", "json", *paths]) == 0
    )
    records = json.loads(capsys.readouterr().out)
    expected = vitkit.load(tiny_hf_classifier, tta="d4").predict(paths)
    for record, answer in zip(records, expected, strict=True):
        assert [p["label"] for p in record["predictions"]] == [p["label"] for p in answer]
        assert np.allclose(
            [p["score"] for p in record["predictions"]], [p["score"] for p in answer]
        )
    out = tmp_path / "emb.npy"
    assert (
        main(["embed", "-m", str(tiny_hf_classifier), "--tta", "rot90", "-o", str(out), *paths])
        == 0
    )
    reference = vitkit.load(tiny_hf_classifier, tta="rot90").embed(paths)
    assert np.allclose(np.load(out), reference, atol=1e-5)


def test_eval_with_tta_scores_the_averaged_probabilities(
    tiny_hf_classifier: Path, photo_dir: Path, tmp_path: Path
) -> None:
    labels = vitkit.load(tiny_hf_classifier).labels
    images = square_photos(photo_dir)
    for index, image in enumerate(images):
        folder = tmp_path / "data" / labels[index % 2]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index}.png")
    out = tmp_path / "eval"
    args = ["eval", "-m", str(tiny_hf_classifier), "--data", str(tmp_path / "data")]
    assert main([*args, "--tta", "d4", "--out", str(out)]) == 0
    loss = json.loads((out / "metrics.json").read_text())["loss"]
    classifier = vitkit.load(tiny_hf_classifier, tta="d4")
    paths = sorted((tmp_path / "data").rglob("*.png"))
    probabilities = classifier.probabilities(classifier.prepare([str(p) for p in paths]))
    targets = torch.tensor([labels.index(p.parent.name) for p in paths])
    expected = -probabilities[torch.arange(len(paths)), targets].log().mean().item()
    assert loss == pytest.approx(expected, rel=1e-5)  # cross-entropy of the mean over 8 views
