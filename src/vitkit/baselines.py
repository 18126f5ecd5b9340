"""CNN baselines: torchvision ResNets, saved and loaded in Hugging Face's ResNet layout.

A ``ResNetClassifier`` wraps a torchvision ResNet (18/34/50/101/152) so it plugs into the same
trainer, metrics and comparison as the ViTs: ``model(pixels)`` returns an object with ``.logits``
and the model carries a ``config`` with ``id2label``. Three ways in:

- from scratch (``build_resnet("resnet18", id2label)``);
- from a torchvision state dict file (``.pth`` / ``.safetensors`` of ``torchvision.models.resnet50``);
- from an HF directory in ``microsoft/resnet-50`` layout (``ResNetForImageClassification``).

It is always saved as an HF ResNet directory (config.json, model.safetensors,
preprocessor_config.json), which transformers loads with no conversion. The key mapping:

    torchvision                      HF ResNetForImageClassification
    conv1 / bn1                      resnet.embedder.embedder.convolution / .normalization
    layer{s+1}.{b}.conv{k+1}         resnet.encoder.stages.{s}.layers.{b}.layer.{k}.convolution
    layer{s+1}.{b}.bn{k+1}           resnet.encoder.stages.{s}.layers.{b}.layer.{k}.normalization
    layer{s+1}.{b}.downsample.0 / .1 resnet.encoder.stages.{s}.layers.{b}.shortcut.convolution / .normalization
    fc                               classifier.1

Both put the stride of a bottleneck block in its 3x3 convolution ("ResNet v1.5"; HF's
``downsample_in_bottleneck=False``), so the mapping is a pure renaming.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.atomic_files import write_directory_atomically
from vitkit.errors import CheckpointError

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
    """What a ResNet baseline needs to be rebuilt; written as an HF ResNet config.json."""

    arch: str = "resnet50"
    id2label: dict[int, str] = field(default_factory=dict)
    image_size: int = 224

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown ResNet {self.arch!r}: use one of {', '.join(ARCHITECTURES)}")
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

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
        return cls(arch=arch, id2label=id2label, image_size=int(data.get("image_size", 224)))


@dataclass
class ResNetOutput:
    logits: torch.Tensor


class ResNetClassifier(nn.Module):
    """A torchvision ResNet with a config (labels, architecture) and an ``.logits`` output."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        import torchvision

        self.config = config
        constructor = getattr(torchvision.models, config.arch)
        self.net = constructor(weights=None, num_classes=max(config.num_labels, 1))

    def forward(self, pixel_values: torch.Tensor) -> ResNetOutput:
        return ResNetOutput(self.net(pixel_values))

    def reset_head(self, id2label: dict[int, str]) -> None:
        """A new linear layer for new classes (the backbone is kept)."""
        self.config = ResNetConfig(self.config.arch, dict(id2label), self.config.image_size)
        fc = self.net.fc
        self.net.fc = nn.Linear(fc.in_features, len(id2label), device=fc.weight.device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_resnet(arch: str, id2label: dict[int, str], image_size: int = 224) -> ResNetClassifier:
    """A randomly initialised ResNet (torchvision's init) for ``id2label``."""
    return ResNetClassifier(ResNetConfig(arch, dict(id2label), image_size))


# ---- key mapping ------------------------------------------------------------------------
_TV_TO_HF = [
    (r"^conv1\.", "resnet.embedder.embedder.convolution."),
    (r"^bn1\.", "resnet.embedder.embedder.normalization."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", "SHORTCUT_CONV"),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", "SHORTCUT_NORM"),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", "CONV"),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", "NORM"),
    (r"^fc\.", "classifier.1."),
]


def torchvision_to_hf_key(key: str) -> str:
    """``layer2.0.conv1.weight`` -> ``resnet.encoder.stages.1.layers.0.layer.0.convolution.weight``."""
    for pattern, replacement in _TV_TO_HF:
        match = re.match(pattern, key)
        if not match:
            continue
        rest = key[match.end() :]
        if replacement in ("CONV", "NORM"):
            stage, block, index = (int(g) for g in match.groups())
            kind = "convolution" if replacement == "CONV" else "normalization"
            return (
                f"resnet.encoder.stages.{stage - 1}.layers.{block}.layer.{index - 1}.{kind}.{rest}"
            )
        if replacement.startswith("SHORTCUT"):
            stage, block = (int(g) for g in match.groups())
            kind = "convolution" if replacement == "SHORTCUT_CONV" else "normalization"
            return f"resnet.encoder.stages.{stage - 1}.layers.{block}.shortcut.{kind}.{rest}"
        return replacement + rest
    raise KeyError(f"no HF name for torchvision ResNet key {key!r}")


def hf_to_torchvision_key(key: str) -> str:
    """The inverse of ``torchvision_to_hf_key``."""
    key = key.removeprefix("model.")  # some exports prefix everything
    rules = [
        (r"^resnet\.embedder\.embedder\.convolution\.", lambda m: "conv1."),
        (r"^resnet\.embedder\.embedder\.normalization\.", lambda m: "bn1."),
        (
            r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.",
        ),
        (
            r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.",
        ),
        (
            r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.",
        ),
        (
            r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
            lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.",
        ),
        (r"^classifier\.1\.", lambda m: "fc."),
    ]
    for pattern, build in rules:
        match = re.match(pattern, key)
        if match:
            return build(match) + key[match.end() :]
    raise KeyError(f"no torchvision name for HF ResNet key {key!r}")


# ---- load / save ------------------------------------------------------------------------
def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (got {type(state).__name__})")
    return state


def _load_into(model: ResNetClassifier, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        result = model.net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensor shapes differ: another architecture
        first = str(error).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{source}: weights do not fit {model.config.arch} ({first})"
        ) from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: weights do not fit {model.config.arch} "
            f"(missing {missing[:4]}, unexpected {result.unexpected_keys[:4]})"
        )


def is_resnet_dir(directory: str | Path) -> bool:
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        return False
    return json.loads(config_path.read_text()).get("model_type") == "resnet"


def load_resnet_dir(directory: str | Path) -> tuple[ResNetClassifier, dict[str, Any] | None]:
    """(model in eval mode, preprocessor_config or None) from an HF ResNet directory."""
    path = Path(directory)
    if not is_resnet_dir(path):
        raise CheckpointError(f"{path}: no config.json with model_type 'resnet' (HF ResNet layout)")
    data = json.loads((path / "config.json").read_text())
    config = ResNetConfig.from_hf_dict(data, source=str(path / "config.json"))
    candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
    weights = next((c for c in candidates if c.is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: neither model.safetensors nor pytorch_model.bin found")
    hf_state = _read_weights(weights)
    state = {hf_to_torchvision_key(k): v for k, v in hf_state.items()}
    if not config.num_labels and "fc.weight" in state:
        config.id2label = {i: f"LABEL_{i}" for i in range(state["fc.weight"].shape[0])}
    model = ResNetClassifier(config)
    _load_into(model, state, str(weights))
    processor_path = path / "preprocessor_config.json"
    processor = json.loads(processor_path.read_text()) if processor_path.is_file() else None
    return model.eval(), processor


def load_torchvision_weights(
    path: str | Path, arch: str, id2label: dict[int, str] | None = None
) -> ResNetClassifier:
    """A ResNet from a torchvision state dict; a head of another size is replaced for ``id2label``."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such torchvision weights file")
    state = _read_weights(file)
    classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    model = ResNetClassifier(ResNetConfig(arch, {i: f"LABEL_{i}" for i in range(classes)}))
    _load_into(model, state, str(file))
    if id2label and len(id2label) != classes:
        model.reset_head(id2label)
    elif id2label:
        model.config.id2label = dict(id2label)
    return model


def load_resnet(
    source: str | Path, arch: str = "resnet50", id2label: dict[int, str] | None = None
) -> ResNetClassifier:
    """From an HF ResNet directory or a torchvision weights file (``arch`` names its shape)."""
    path = Path(source)
    if path.is_dir():
        model, _ = load_resnet_dir(path)
        if id2label and model.config.labels() != [id2label[i] for i in range(len(id2label))]:
            model.reset_head(id2label)
        return model
    return load_torchvision_weights(path, arch, id2label)


def resnet_processor_config(image_size: int) -> dict[str, Any]:
    """microsoft/resnet-50's preprocessing at ``image_size``, without its 224/0.875 crop."""
    return {
        "image_processor_type": "ConvNextImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,  # bilinear, as vitkit's other processors
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    }


def save_resnet(
    model: ResNetClassifier, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write an HF ResNet directory atomically (temp dir, then rename)."""
    from safetensors.torch import save_file

    def write(staging: Path) -> None:
        staging.mkdir()
        # No .clone(): the weights are written as they are (each has its own storage already).
        hf_state = {
            torchvision_to_hf_key(k): v.detach().contiguous()
            for k, v in model.net.state_dict().items()
        }
        save_file(hf_state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
        processor = processor_config or resnet_processor_config(model.config.image_size)
        (staging / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")

    return write_directory_atomically(directory, write)
