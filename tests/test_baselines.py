"""ResNet baselines: parity with transformers' ResNetForImageClassification on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from vitkit.checkpoints.hf_resnet import (
    hf_to_torchvision_key,
    load_resnet,
    load_resnet_dir,
    save_resnet,
    torchvision_to_hf_key,
)
from vitkit.errors import CheckpointError
from vitkit.models.resnet import build_resnet

LABELS = {0: "cat", 1: "coffee", 2: "rocket"}


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real photos, 64x64, ImageNet-normalised."""
    from PIL import Image
    from skimage import data

    batch = []
    for pixels in (data.chelsea(), data.coffee()):
        image = Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR)
        batch.append(torch.tensor(list(image.getdata()), dtype=torch.float32).view(64, 64, 3))
    tensor = torch.stack(batch).permute(0, 3, 1, 2) / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (tensor - mean) / std


def _hf_resnet(layer_type: str, hidden_sizes: list[int], depths: list[int]) -> torch.nn.Module:
    config = transformers.ResNetConfig(
        layer_type=layer_type,
        hidden_sizes=hidden_sizes,
        depths=depths,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    model = transformers.ResNetForImageClassification(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fresh BatchNorms are identities: randomise them so the mapping matters
        for name, tensor in [*model.named_buffers(), *model.named_parameters()]:
            if name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif "normalization" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                tensor.copy_(base + torch.randn(tensor.shape, generator=generator) * 0.1)
    return model


@pytest.mark.parametrize(
    ("arch", "layer_type", "hidden_sizes", "depths"),
    [
        ("resnet18", "basic", [64, 128, 256, 512], [2, 2, 2, 2]),
        ("resnet50", "bottleneck", [256, 512, 1024, 2048], [3, 4, 6, 3]),  # microsoft/resnet-50
    ],
)
def test_hf_resnet_directory_parity_both_ways(
    tmp_path: Path,
    photos: torch.Tensor,
    arch: str,
    layer_type: str,
    hidden_sizes: list[int],
    depths: list[int],
) -> None:
    hf_model = _hf_resnet(layer_type, hidden_sizes, depths)
    hf_model.save_pretrained(tmp_path / "hf")
    ours, _ = load_resnet_dir(tmp_path / "hf")
    assert ours.config.arch == arch and ours.config.labels() == ["cat", "coffee", "rocket"]
    with torch.no_grad():
        expected = hf_model(photos).logits
        got = ours(photos).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    save_resnet(ours, tmp_path / "ours")
    reloaded = transformers.ResNetForImageClassification.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(photos).logits, expected, atol=1e-4, rtol=1e-4)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["vitkit_arch"] == arch


def test_key_mapping_covers_every_torchvision_key() -> None:
    import torchvision

    for constructor in (torchvision.models.resnet18, torchvision.models.resnet50):
        keys = list(constructor(weights=None).state_dict())
        hf_keys = [torchvision_to_hf_key(k) for k in keys]
        assert len(set(hf_keys)) == len(keys)
        assert [hf_to_torchvision_key(k) for k in hf_keys] == keys
    assert torchvision_to_hf_key("layer2.0.downsample.1.running_var") == (
        "resnet.encoder.stages.1.layers.0.shortcut.normalization.running_var"
    )
    assert torchvision_to_hf_key("layer4.2.conv3.weight") == (
        "resnet.encoder.stages.3.layers.2.layer.2.convolution.weight"
    )


def test_torchvision_state_dict_with_another_head(tmp_path: Path, photos: torch.Tensor) -> None:
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None, num_classes=1000).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    same_head = load_resnet(tmp_path / "resnet18.pth", "resnet18").eval()
    with torch.no_grad():
        torch.testing.assert_close(same_head(photos).logits, reference(photos))
    new_head = load_resnet(tmp_path / "resnet18.pth", "resnet18", LABELS).eval()
    assert new_head.net.fc.out_features == 3 and new_head.config.labels() == [
        "cat",
        "coffee",
        "rocket",
    ]
    torch.testing.assert_close(new_head.net.conv1.weight, reference.conv1.weight)
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: weights do not fit resnet50"):
        load_resnet(tmp_path / "resnet18.pth", "resnet50")


def test_round_trip_and_unsupported_variants(tmp_path: Path, photos: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_resnet("resnet18", LABELS, image_size=64).eval()
    save_resnet(model, tmp_path / "run")
    loaded, processor = load_resnet_dir(tmp_path / "run")
    assert processor is not None and processor["size"] == {"height": 64, "width": 64}
    with torch.no_grad():
        torch.testing.assert_close(loaded(photos).logits, model(photos).logits)
    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    config["embedding_size"] = 32
    config_path.write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"config\.json: ResNet variant not available in torchvision"
    ):
        load_resnet_dir(tmp_path / "run")
