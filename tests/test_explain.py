"""Attention maps: rollout arithmetic by hand, shapes and sums, and a model that must look at one quadrant."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.inference.explain import (
    attention_maps,
    attention_rollout,
    explain_image,
    last_layer_cls_attention,
    quadrant_mass,
    rollout_matrix,
)
from vitkit.models.config import ViTConfig
from vitkit.models.deit import DistilledViT
from vitkit.models.vit import ViT


def test_rollout_by_hand() -> None:
    """Two layers, three tokens ([CLS] + a 1x2 patch grid); every number worked out on paper.

    Layer 1, two heads: [CLS] -> patch 1, and [CLS] -> itself. Heads averaged, + identity, rows
    renormalised: [CLS] row [.75, .25, 0]. Layer 2, one head: [CLS] -> patch 2, giving
    [.5, 0, .5]. Patches attend to themselves. Product, [CLS] row: .5*[.75,.25,0] + .5*[0,0,1]
    = [.375, .125, .5]; over the patches renormalised: [.2, .8].
    """
    to_patch1 = [[0, 1, 0], [0, 1, 0], [0, 0, 1]]
    to_self = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    to_patch2 = [[0, 0, 1], [0, 1, 0], [0, 0, 1]]
    layer1 = torch.tensor([[to_patch1, to_self]], dtype=torch.float32)  # (B=1, heads=2, 3, 3)
    layer2 = torch.tensor([[to_patch2]], dtype=torch.float32)
    matrix = rollout_matrix([layer1, layer2])
    torch.testing.assert_close(matrix[0, 0], torch.tensor([0.375, 0.125, 0.5]))
    torch.testing.assert_close(
        attention_rollout([layer1, layer2], (1, 2))[0], torch.tensor([[0.2, 0.8]])
    )
    # the last-layer map ignores layer 1 entirely: [CLS] -> patch 2 only
    torch.testing.assert_close(
        last_layer_cls_attention([layer1, layer2], (1, 2))[0], torch.tensor([[0.0, 1.0]])
    )


def small_config(**overrides: object) -> ViTConfig:
    base: dict[str, object] = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        id2label={0: "a", 1: "b", 2: "c"},
        layer_norm_eps=1e-6,
    )
    base.update(overrides)
    return ViTConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("model_class", [ViT, DistilledViT])
def test_maps_are_distributions_over_the_patch_grid(model_class: type[ViT]) -> None:
    from skimage import data

    torch.manual_seed(0)
    model = model_class(small_config()).eval()
    photos = [data.chelsea(), data.coffee()]
    pixels = (
        torch.stack(
            [
                torch.tensor(np.asarray(Image.fromarray(p).resize((48, 32)))).permute(2, 0, 1)
                for p in photos
            ]
        ).float()
        / 127.5
        - 1
    )  # a non-square input: a 4x6 grid
    maps = attention_maps(model, pixels)
    for attention_map in (maps.rollout, maps.last_layer):
        assert attention_map.shape == (2, 4, 6)
        assert (attention_map >= 0).all()
        torch.testing.assert_close(attention_map.sum(dim=(1, 2)), torch.ones(2))
    with torch.no_grad():
        attentions = model(pixels, output_attentions=True).attentions
    assert attentions is not None
    matrix = rollout_matrix(attentions)
    prefix = 2 if model_class is DistilledViT else 1
    assert matrix.shape == (2, 24 + prefix, 24 + prefix)
    torch.testing.assert_close(matrix.sum(dim=-1), torch.ones(2, 24 + prefix))
    torch.testing.assert_close(quadrant_mass(maps.rollout).sum(dim=1), torch.ones(2))


def _quadrant_digits(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 images made of four real 8x8 digits (0s and 1s); the label is the top-left digit.

    The other three quadrants hold 0s and 1s too, so only the top-left one tells the answer.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = digits.target <= 1
    images = torch.tensor(digits.images[keep] / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target[keep])
    pick = torch.randint(len(images), (count, 4), generator=generator)
    tiles = images[pick]  # (count, 4, 8, 8)
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=2)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=2)
    grey = torch.cat([top, bottom], dim=1)[:, None]
    return (grey.expand(-1, 3, -1, -1) * 2 - 1).contiguous(), labels[pick[:, 0]]


def test_trained_model_rollout_concentrates_on_the_quadrant_that_decides() -> None:
    """A one-block ViT trained for a few seconds: its rollout puts > 50% of the mass top-left.

    One block keeps the test fast and its outcome stable: with one block the only route from
    the image to the head is the [CLS] token's attention, so a model that solves the task must
    look at the top-left quadrant. (The multi-layer product is checked by hand above.)
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = _quadrant_digits(1024, generator)
    test_x, test_y = _quadrant_digits(128, generator)
    config = small_config(
        num_hidden_layers=1, image_size=16, patch_size=4, id2label={0: "0", 1: "1"}
    )
    model = ViT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        batch = torch.randint(len(train_x), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(train_x[batch]).logits, train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    maps = attention_maps(model, test_x)
    assert maps.logits is not None
    accuracy = (maps.logits.argmax(-1) == test_y).float().mean().item()
    assert accuracy > 0.9, f"the tiny model did not learn the task (accuracy {accuracy:.2f})"
    top_left = quadrant_mass(maps.rollout)[:, 0].mean().item()
    assert top_left > 0.5, f"rollout mass in the deciding quadrant: {top_left:.2f}"


def test_explain_image_returns_a_png_and_the_top_k() -> None:
    from skimage import data

    torch.manual_seed(0)
    model = ViT(small_config()).eval()
    png, predictions = explain_image(model, Image.fromarray(data.astronaut()), top_k=2)
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and picture.width > 400
    assert [p["label"] for p in predictions] and len(predictions) == 2
    assert predictions[0]["score"] >= predictions[1]["score"]
    assert {p["label"] for p in predictions} <= {"a", "b", "c"}


@pytest.mark.parametrize("kind", ["vit", "student"])
def test_explain_command_writes_one_png_per_image(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from skimage import data

    from vitkit.checkpoints import save_pretrained
    from vitkit.checkpoints.hf_deit import save_student
    from vitkit.cli import main

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    if kind == "vit":
        save_pretrained(ViT(small_config()), model_dir)
    else:
        save_student(DistilledViT(small_config()), model_dir)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(data.chelsea()).save(images / "chelsea.jpg")
    Image.fromarray(data.coffee()).save(images / "coffee.png")
    code = main(
        [
            "explain",
            str(images),
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "maps"),
            "--top-k",
            "3",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(Path(r["output"]).name for r in records) == [
        "chelsea.explain.png",
        "coffee.explain.png",
    ]
    for record in records:
        assert Path(record["output"]).read_bytes()[:4] == b"\x89PNG"
        assert len(record["predictions"]) == 3
