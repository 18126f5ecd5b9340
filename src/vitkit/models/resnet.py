"""The CNN baseline: torchvision ResNets (18/34/50/101/152) with a config and ``.logits`` output.

A ``ResNetClassifier`` wraps a torchvision ResNet so it plugs into the same trainer, metrics and
comparison as the ViTs: ``model(pixels)`` returns an object with ``.logits`` and the model carries
a ``config`` with ``id2label``. ``vitkit.checkpoints.hf_resnet`` reads and writes it in Hugging
Face's ``ResNetForImageClassification`` layout (what ``microsoft/resnet-50`` ships).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from vitkit.errors import CheckpointError
from vitkit.models.config import PROBLEM_TYPES, check_thresholds
from vitkit.models.protocol import Capabilities, check_pool

if TYPE_CHECKING:
    from torchvision.models import ResNet

# torchvision constructor name -> (block type, blocks per stage); widths are torchvision's.
ARCHITECTURES: dict[str, tuple[str, list[int]]] = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}


_HIDDEN_SIZES = {"basic": [64, 128, 256, 512], "bottleneck": [256, 512, 1024, 2048]}


IMAGENET_MEAN = [0.485, 0.456, 0.406]


IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ResNetConfig:
    """What a ResNet baseline needs to be rebuilt; written as an HF ResNet config.json.

    ``problem_type`` and ``thresholds`` mean what they mean for a ViT (``vitkit.models.config``):
    HF's key (a multi-label head gets sigmoid scores) and the multi-label decision thresholds,
    kept in config.json's ``"vitkit"`` section.
    """

    model_type: ClassVar[str] = "resnet"

    arch: str = "resnet50"
    id2label: dict[int, str] = field(default_factory=dict)
    image_size: int = 224
    problem_type: str | None = None
    thresholds: float | list[float] | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown ResNet {self.arch!r}: use one of {', '.join(ARCHITECTURES)}")
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"problem_type {self.problem_type!r} is not one of HF's {', '.join(PROBLEM_TYPES)}"
            )
        self.thresholds = check_thresholds(self.thresholds, self.num_labels)

    def replace(self, **changes: Any) -> ResNetConfig:
        return dataclasses.replace(self, **changes)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def image_hw(self) -> tuple[int, int]:
        """The resolution it was trained at (a CNN runs at any size; the processor uses this)."""
        return (self.image_size, self.image_size)

    @property
    def layer_type(self) -> str:
        return ARCHITECTURES[self.arch][0]

    @property
    def depths(self) -> list[int]:
        return ARCHITECTURES[self.arch][1]

    def to_hf_dict(self) -> dict[str, Any]:
        labels = self.labels()
        return {
            "model_type": "resnet",
            "architectures": ["ResNetForImageClassification"],
            "num_channels": 3,
            "embedding_size": 64,
            "hidden_sizes": _HIDDEN_SIZES[self.layer_type],
            "depths": self.depths,
            "layer_type": self.layer_type,
            "hidden_act": "relu",
            "downsample_in_first_stage": False,
            "downsample_in_bottleneck": False,
            "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)},
            "image_size": self.image_size,  # vitkit-only: the resolution it was trained at
            "vitkit_arch": self.arch,
            **({"problem_type": self.problem_type} if self.problem_type is not None else {}),
            **({"vitkit": {"thresholds": self.thresholds}} if self.thresholds is not None else {}),
        }

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config.json") -> ResNetConfig:
        """Match an HF ResNet config to a torchvision architecture, or explain why not."""
        layer_type = data.get("layer_type", "bottleneck")
        depths = list(data.get("depths", [3, 4, 6, 3]))
        arch = next(
            (name for name, spec in ARCHITECTURES.items() if spec == (layer_type, depths)), None
        )
        problems = []
        if arch is None:
            problems.append(f"layer_type={layer_type} depths={depths}")
        if list(data.get("hidden_sizes", _HIDDEN_SIZES[layer_type])) != _HIDDEN_SIZES.get(
            layer_type
        ):
            problems.append(f"hidden_sizes={data.get('hidden_sizes')}")
        for key, expected in (
            ("embedding_size", 64),
            ("hidden_act", "relu"),
            ("downsample_in_first_stage", False),
            ("downsample_in_bottleneck", False),
            ("num_channels", 3),
        ):
            if data.get(key, expected) != expected:
                problems.append(f"{key}={data.get(key)}")
        if problems or arch is None:
            raise CheckpointError(
                f"{source}: ResNet variant not available in torchvision ({', '.join(problems)}); "
                f"supported: {', '.join(ARCHITECTURES)} with HF's default layout"
            )
        id2label = data.get("id2label") or {}
        return cls(
            arch=arch,
            id2label=id2label,
            image_size=int(data.get("image_size", 224)),
            problem_type=data.get("problem_type"),
            thresholds=(data.get("vitkit") or {}).get("thresholds"),
        )


@dataclass
class ResNetOutput:
    logits: torch.Tensor


# A CNN: its embedding is the globally averaged last feature map (what the head reads).
_CAPABILITIES = Capabilities(pools=("mean",), default_pool="mean")


class ResNetClassifier(nn.Module):
    """A torchvision ResNet with a config (labels, architecture) and an ``.logits`` output."""

    capabilities = _CAPABILITIES

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.net = _torchvision_resnet(config.arch, max(config.num_labels, 1))

    def forward(self, pixel_values: torch.Tensor) -> ResNetOutput:
        return ResNetOutput(self.net(pixel_values))

    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)

    def forward_embedding(self, pixel_values: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """(B, channels): the last stage's feature map averaged over positions (the fc input)."""
        check_pool(self, pool)
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(pixel_values))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1)

    def reset_head(self, id2label: dict[int, str]) -> None:
        """A new linear layer for new classes (the backbone is kept)."""
        # The old head's decision thresholds mean nothing for the new one.
        self.config = self.config.replace(id2label=dict(id2label), thresholds=None)
        fc = self.net.fc
        self.net.fc = nn.Linear(fc.in_features, len(id2label), device=fc.weight.device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> int:
        """2 x multiply-accumulates of the convolutions and the head for one image (counted by
        ``torch.utils.flop_counter`` on a weightless copy; norms and pooling left out)."""
        height, width = image_hw or self.config.image_hw
        return _resnet_flops(self.config.arch, max(self.config.num_labels, 1), height, width)


@lru_cache(maxsize=32)
def _resnet_flops(arch: str, classes: int, height: int, width: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode  # 0.1 s of import: only when counted

    with torch.device("meta"):
        net = _torchvision_resnet(arch, classes).eval()
        pixels = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter:
        net(pixels)
    return int(counter.get_total_flops())


def _torchvision_resnet(arch: str, classes: int) -> ResNet:
    # Imported here: importing torchvision pulls in torch._dynamo (~2 s of CPU), which every
    # ViT command would pay at start-up because the checkpoint registry imports this module.
    import torchvision

    return getattr(torchvision.models, arch)(weights=None, num_classes=classes)


def build_resnet(arch: str, id2label: dict[int, str], image_size: int = 224) -> ResNetClassifier:
    """A randomly initialised ResNet (torchvision's init) for ``id2label``."""
    return ResNetClassifier(ResNetConfig(arch, dict(id2label), image_size))
