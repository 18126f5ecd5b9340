"""ResNet baselines on disk: HF ``ResNetForImageClassification`` directories and torchvision files.

Three ways in: from an HF directory in ``microsoft/resnet-50`` layout, from a torchvision state
dict file (``.pth`` / ``.safetensors`` of ``torchvision.models.resnet50``), or (in
``vitkit.models.resnet``) from scratch. It is always saved as an HF ResNet directory (config.json,
model.safetensors, preprocessor_config.json), which transformers loads with no conversion. The
key mapping:

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vitkit.atomic_files import write_directory_atomically
from vitkit.checkpoints.directories import read_json
from vitkit.checkpoints.hf import check_replaceable, read_weights
from vitkit.checkpoints.key_mapping import KeyReader, load_checked
from vitkit.checkpoints.overrides import apply_overrides
from vitkit.checkpoints.weight_files import StateDict, read_state_dict
from vitkit.errors import CheckpointError
from vitkit.models.resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResNetClassifier,
    ResNetConfig,
)

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
def _reader(state: StateDict, rename: Callable[[str], str]) -> KeyReader:
    """A KeyReader holding ``state`` under ``net.<torchvision name>`` (the model's names);
    keys ``rename`` cannot place stay behind and are reported as unexpected."""
    reader = KeyReader(state)
    for name in list(state):
        try:
            ours = rename(name)
        except KeyError:
            continue
        reader.move(name, f"net.{ours}")
    return reader


def _load_into(model: ResNetClassifier, reader: KeyReader, source: Path | str) -> None:
    what = f"{model.config.arch} with {max(model.config.num_labels, 1)} classes"
    load_checked(model, reader, source, what, optional=("num_batches_tracked",))


def is_resnet_config(data: Any) -> bool:
    return isinstance(data, dict) and data.get("model_type") == "resnet"


def is_resnet_dir(directory: str | Path) -> bool:
    config_path = Path(directory) / "config.json"
    return config_path.is_file() and is_resnet_config(read_json(config_path))


def load_resnet_dir(
    directory: str | Path,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ResNetClassifier, dict[str, Any] | None]:
    """(model in eval mode, preprocessor_config or None) from an HF ResNet directory.

    Every key problem (missing, unexpected, wrong shape) is listed in one CheckpointError.
    ``image_size`` only records the resolution to run at: a CNN's weights do not depend on it.
    ``overrides``: ResNetConfig fields to set (``--model-arg``).
    """
    path = Path(directory)
    if not is_resnet_dir(path):
        raise CheckpointError(f"{path}: no config.json with model_type 'resnet' (HF ResNet layout)")
    data = read_json(path / "config.json")
    config = ResNetConfig.from_hf_dict(data, str(path / "config.json"))
    weights, hf_state = read_weights(path)
    if not config.num_labels and "classifier.1.weight" in hf_state:
        classes = hf_state["classifier.1.weight"].shape[0]
        config.id2label = {i: f"LABEL_{i}" for i in range(classes)}
    processor_path = path / "preprocessor_config.json"
    processor = read_json(processor_path) if processor_path.is_file() else None
    processor = plain_processor_config(processor) if processor else None
    if image_size is not None:
        config.image_size = image_size
    elif "image_size" not in data and processor is not None:  # transformers' own ResNet dirs
        config.image_size = _input_side(processor) or config.image_size
    config = apply_overrides(config, overrides, path / "config.json")
    model = ResNetClassifier(config)
    _load_into(model, _reader(hf_state, hf_to_torchvision_key), weights)
    return model.to(device).eval(), processor


def _input_side(processor: dict[str, Any]) -> int | None:
    """The square side a processor config feeds the network (its crop, else its fixed size)."""
    size = processor.get("crop_size") if processor.get("do_center_crop") else processor.get("size")
    if isinstance(size, dict) and size.get("height") == size.get("width"):
        return int(size["height"]) if size.get("height") else None
    return None


# transformers' ConvNextImageProcessor (what microsoft/resnet-50 ships) without a crop_pct key
_CONVNEXT_CROP_PCT = 224 / 256
_CONVNEXT_NO_CROP_FROM = 384  # at or above this shortest_edge it resizes to a square, no crop


def plain_processor_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` in the resize / center-crop terms vitkit's processor reads.

    A ConvNextImageProcessor (microsoft/resnet-50's) says ``size: {shortest_edge: S}`` and
    ``crop_pct``: below S=384 it resizes the shortest edge to ``int(S / crop_pct)`` and center
    crops S x S; from 384 on it resizes to S x S. Other configs are returned as they are.
    """
    size = config.get("size") or {}
    is_convnext = str(config.get("image_processor_type", "")).startswith("ConvNextImageProcessor")
    if not is_convnext or "shortest_edge" not in size:
        return config
    plain = {k: v for k, v in config.items() if k != "crop_pct"}
    shortest = int(size["shortest_edge"])
    if shortest >= _CONVNEXT_NO_CROP_FROM:
        plain["size"] = {"height": shortest, "width": shortest}
        return plain
    crop_pct = config.get("crop_pct") or _CONVNEXT_CROP_PCT
    plain["size"] = {"shortest_edge": int(shortest / crop_pct)}
    plain.update(do_center_crop=True, crop_size={"height": shortest, "width": shortest})
    return plain


def load_torchvision_weights(
    path: str | Path, arch: str, id2label: dict[int, str] | None = None
) -> ResNetClassifier:
    """A ResNet from a torchvision state dict; a head of another size is replaced for ``id2label``."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such torchvision weights file")
    state = read_state_dict(file)
    classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    model = ResNetClassifier(ResNetConfig(arch, {i: f"LABEL_{i}" for i in range(classes)}))
    _load_into(model, _reader(state, lambda name: name), file)
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
    """microsoft/resnet-50's normalisation at ``image_size``, without its 224/0.875 crop: a
    plain resize, which transformers spells as a ViTImageProcessor (its ConvNext processor only
    knows shortest_edge + crop_pct)."""
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,  # bilinear, as vitkit's other processors
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    }


def default_processor_config(config: ResNetConfig) -> dict[str, Any]:
    return resnet_processor_config(config.image_size)


def save_resnet(
    model: ResNetClassifier, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write an HF ResNet directory atomically (temp dir, then rename)."""
    target = Path(directory).expanduser().absolute()
    check_replaceable(target)

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

    return write_directory_atomically(target, write)
