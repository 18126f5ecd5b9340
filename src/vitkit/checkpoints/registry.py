"""The model registry: every model type vitkit runs, and the formats it reads them from.

    model_type -> ModelType(config class, builder, directory reader, saver, default preprocessing)

as transformers' Auto classes and timm's ``register_model`` map a name to a model. Registered:

- ``vit``: HF ``ViTForImageClassification`` / ``ViTModel`` directories and hub ids, timm state
  dicts (files or hub-style directories: UNI, UNI2-h, Virchow, Prov-GigaPath, H-optimus-0...),
  Google ``.npz`` files, and ``.onnx`` exports;
- ``dinov2``: HF ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (and their image classifiers)
  directories and hub ids (facebook/dinov2-*, owkin/phikon-v2), read into the same ViT;
- ``deit``: the DeiT student, HF ``DeiTForImageClassificationWithTeacher`` directories (two
  heads, logits averaged);
- ``resnet``: the CNN baseline, HF ``ResNetForImageClassification`` directories (the layout of
  ``microsoft/resnet-50``);
- ``vit_mae``: masked-autoencoder pre-training, HF ``ViTMAEForPreTraining`` directories (what
  ``vitkit pretrain`` writes, the layout of ``facebook/vit-mae-*``): ``load_model`` gives the
  encoder, a headless ``ViT`` (the decoder is dropped), for fine-tuning and embedding;
  ``save_model`` of an ``MAE`` writes the whole model.

``load_model(source)`` returns a ``LoadedModel`` for any of them; ``save_model(model, directory)``
writes any of them in its own HF layout. Every model meets ``vitkit.models.protocol``, which is
all the commands rely on.

Adding a model type (dinov2, vit_mae, ...): write the network in ``vitkit/models/`` (meeting the
protocol), its config.json reader and writer in ``vitkit/checkpoints/``, and add one
``ModelType`` to ``MODEL_TYPES`` at the bottom of this file (or call ``register`` from outside).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.checkpoints import dinov2, hf, hf_deit, hf_dpt, hf_mae, hf_resnet
from vitkit.checkpoints._common import WEIGHT_SUFFIXES, read_json
from vitkit.checkpoints.hub import download, is_hub_id
from vitkit.checkpoints.npz import load_npz
from vitkit.checkpoints.onnx import OnnxModel, is_onnx_file
from vitkit.checkpoints.timm import (
    is_timm_directory,
    load_timm_directory,
    load_timm_file,
    save_timm_directory,
)
from vitkit.errors import CheckpointError, UnsupportedOperationError
from vitkit.models.config import ImageSize, ViTConfig, to_pair
from vitkit.models.deit import DeiTConfig, DistilledViT
from vitkit.models.mae import MAE, MAEConfig, build_mae
from vitkit.models.protocol import VisionModel
from vitkit.models.resnet import ResNetClassifier, ResNetConfig
from vitkit.models.segmentation import Segmenter, SegmenterConfig
from vitkit.models.vit import ViT

FORMATS = ("hf", "timm", "npz", "hub", "onnx")
Device = str | torch.device
DirectoryReader = Callable[[Path, ImageSize | None, Device], tuple[Any, dict[str, Any] | None]]
Saver = Callable[[Any, Path, dict[str, Any] | None], Path]


@dataclass(frozen=True)
class ModelType:
    """One registered model type: how to build, read, save and preprocess for it."""

    name: str  # config.model_type
    description: str  # what its HF directory is, for messages
    config_class: Any  # has from_hf_dict(dict) and the protocol's config fields
    model_class: type[nn.Module]
    build: Callable[[Any], nn.Module]  # config -> a randomly initialised model
    accepts: Callable[[Any], bool]  # config.json dict -> is it this type's?
    read_directory: DirectoryReader  # (directory, image_size, device) -> (model, processor)
    save: Saver  # (model, directory, processor_config) -> directory
    default_processor: Callable[[Any], dict[str, Any]]  # config -> preprocessor_config.json

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        return self.config_class.from_hf_dict(data)


@dataclass
class LoadedModel:
    """A loaded checkpoint: the model (eval mode) and what came with it."""

    model: Any  # meets vitkit.models.protocol.VisionModel
    processor_config: dict[str, Any] | None
    source: str
    format: str  # one of FORMATS
    model_type: str  # a key of MODEL_TYPES
    resized: bool = False  # loaded at another image_size than the checkpoint's own

    def preprocessing(self) -> dict[str, Any]:
        """The checkpoint's preprocessor_config.json (or its model type's default), resizing
        to the model's resolution when it was loaded at another ``image_size``."""
        if self.processor_config is None:
            return default_processor_config(self.model.config)
        if self.resized:
            return resized_processor_config(self.processor_config, self.model.config.image_hw)
        return self.processor_config


def resized_processor_config(config: dict[str, Any], image_hw: tuple[int, int]) -> dict[str, Any]:
    """The same preprocessing at another resolution (a 224 checkpoint used at 384)."""
    height, width = image_hw
    config = dict(config)
    config["size"] = {"height": height, "width": width}
    if config.get("do_center_crop"):
        config["crop_size"] = {"height": height, "width": width}
    return config


# ---- the table --------------------------------------------------------------------------
MODEL_TYPES: dict[str, ModelType] = {}


def register(model_type: ModelType) -> ModelType:
    """Add (or replace) a model type; returns it."""
    MODEL_TYPES[model_type.name] = model_type
    return model_type


def model_type(name: str) -> ModelType:
    """The registered type ``name``; CheckpointError listing the known ones otherwise."""
    if name not in MODEL_TYPES:
        raise CheckpointError(f"unknown model type {name!r}: vitkit knows {_known()}")
    return MODEL_TYPES[name]


def _known() -> str:
    return "; ".join(f"{t.name} ({t.description})" for t in MODEL_TYPES.values())


def default_processor_config(config: Any) -> dict[str, Any]:
    """The preprocessing a model of this config expects when its checkpoint names none."""
    return model_type(config.model_type).default_processor(config)


# ---- recognising a source ---------------------------------------------------------------
def detect_format(source: str | Path) -> str:
    """One of FORMATS for ``source``; CheckpointError naming it if none fits."""
    path = Path(source).expanduser()
    if path.is_dir():
        return directory_type(path)[0]
    if path.is_file():
        if path.name == "config.json":
            return directory_type(path.parent)[0]
        if path.suffix == ".npz":
            return "npz"
        if is_onnx_file(path):
            return "onnx"
        if path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".pth.tar"):
            return "timm"  # .pth.tar: what timm's train script names its checkpoints
        raise CheckpointError(
            f"{path}: not a checkpoint format vitkit knows (by its suffix {path.suffix or '(none)'}"
            "). Give a HF directory, a .safetensors/.pth/.bin timm state dict, a Google .npz "
            "file, an .onnx export, or a Hub id like google/vit-base-patch16-224."
        )
    if is_hub_id(str(source)):
        return "hub"
    raise CheckpointError(
        f"{source}: no such file or directory (and not a Hugging Face Hub id like "
        "google/vit-base-patch16-224)"
    )


def directory_type(directory: Path) -> tuple[str, ModelType]:
    """("hf" or "timm", the model type) of a checkpoint directory, from its config.json."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory}: a directory without config.json: give the checkpoint file itself "
            "(.safetensors / .pth / .npz / .onnx) or a Hugging Face directory (config.json + "
            "weights)"
        )
    data = read_json(config_path)
    for entry in MODEL_TYPES.values():
        if entry.accepts(data):
            return "hf", entry
    if is_timm_directory(directory):
        return "timm", MODEL_TYPES["vit"]
    found = data.get("model_type") if isinstance(data, dict) else None
    architectures = data.get("architectures") if isinstance(data, dict) else None
    raise CheckpointError(
        f"{config_path}: model_type {found!r} (architectures {architectures}) is not a model "
        f"vitkit reads, nor a timm config (architecture). It reads: {_known()}"
    )


def _inside_checkpoint_directory(path: Path) -> bool:
    """A weights file HF wrote (model.safetensors, pytorch_model.bin) next to its config.json."""
    names = ("model.safetensors", "pytorch_model.bin")
    if path.name not in names or not (path.parent / "config.json").is_file():
        return False
    data = read_json(path.parent / "config.json")
    return any(entry.accepts(data) for entry in MODEL_TYPES.values())


# ---- loading and saving -----------------------------------------------------------------
def load_model(
    source: str | Path,
    *,
    image_size: ImageSize | None = None,
    device: Device = "cpu",
    num_attention_heads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load any registered model type from any format above, in eval mode.

    ``image_size`` resamples a transformer's position embeddings at load time (bicubic,
    antialiased, prefix tokens kept: what timm does when it loads weights at another
    ``img_size``; DINOv2 directories: transformers' rule for their class); for a CNN it only
    sets the resolution its preprocessing resizes to. ``overrides`` set ViT settings the file
    does not record (``--model-arg KEY=VALUE``): for timm state dicts what the shapes cannot
    tell (``num_attention_heads``, ``global_pool``, ``hidden_act``, ``dynamic_img_size``...; see
    ``vitkit.checkpoints.timm``). ``num_attention_heads`` is the same as that override.
    """
    settings = dict(overrides or {})
    if num_attention_heads is not None:
        settings["num_attention_heads"] = num_attention_heads
    loaded = _load(source, image_size, device, settings)
    loaded.resized = image_size is not None
    return loaded


def _load(
    source: str | Path, image_size: ImageSize | None, device: Device, overrides: dict[str, Any]
) -> LoadedModel:
    kind = detect_format(source)
    path = Path(source).expanduser()
    if kind == "hub":
        path = download(str(source))
    elif path.is_file() and (path.name == "config.json" or _inside_checkpoint_directory(path)):
        path = path.parent
    if path.is_dir():
        directory_format, entry = directory_type(path)
        processor: dict[str, Any] | None
        if directory_format == "timm":
            model, processor = load_timm_directory(path, image_size, device, overrides=overrides)
        elif entry.name in _OVERRIDABLE:
            model, processor = _OVERRIDABLE[entry.name](path, image_size, device, overrides)
        else:
            _refuse_overrides(overrides, entry.name, path)
            model, processor = entry.read_directory(path, image_size, device)
        found = "hub" if kind == "hub" else directory_format
        return LoadedModel(model, processor, str(source), found, entry.name)
    if kind == "npz":
        model = load_npz(path, image_size, device, overrides=overrides)
        return LoadedModel(model, None, str(source), "npz", "vit")
    if kind == "onnx":
        _refuse_overrides(overrides, "onnx", path)
        return _load_onnx(path, image_size, str(source))
    model = load_timm_file(path, image_size, device, overrides=overrides)
    return LoadedModel(model, None, str(source), "timm", "vit")


def _refuse_overrides(overrides: dict[str, Any], kind: str, path: Path) -> None:
    if overrides:
        raise CheckpointError(
            f"{path}: --model-arg ({', '.join(overrides)}) applies to ViT checkpoints (HF ViT "
            f"and DINOv2 directories, timm files, .npz), not to a {kind} model"
        )


def _load_onnx(path: Path, image_size: ImageSize | None, source: str) -> LoadedModel:
    if image_size is not None:
        raise CheckpointError(
            f"{path}: an ONNX model runs at the size it was exported at; re-export it for "
            "another image size (vitkit export --image-size N)"
        )

    def read_config(data: dict[str, Any]) -> Any:
        return model_type(data.get("model_type", "vit")).config_from_dict(data)

    model = OnnxModel(path, read_config=read_config)
    return LoadedModel(model, model.processor_config, source, "onnx", model.model_type)


def save_model(
    model: nn.Module, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` in its model type's HF layout (transformers loads it with no conversion).

    ``processor_config`` defaults to the model type's preprocessing at the model's resolution.
    """
    entry = model_type(getattr(getattr(model, "config", None), "model_type", "?"))
    if not isinstance(model, entry.model_class) or isinstance(model, OnnxModel):
        raise UnsupportedOperationError(
            f"{type(model).__name__} is not a {entry.name} model vitkit can save "
            "(an ONNX file is written by `vitkit export`, and is not converted back)"
        )
    return entry.save(model, Path(directory), processor_config)


def build_model(config: Any) -> VisionModel:
    """A randomly initialised model of ``config``'s registered type."""
    model: Any = model_type(config.model_type).build(config)
    return model


# ---- the registered types ---------------------------------------------------------------
def _read_vit(directory: Path, image_size: ImageSize | None, device: Device) -> Any:
    return hf.load_hf_directory(directory, image_size, device)


def _read_resnet(directory: Path, image_size: ImageSize | None, device: Device) -> Any:
    size = None
    if image_size is not None:
        height, width = to_pair(image_size)
        if height != width:
            raise CheckpointError(f"{directory}: a ResNet runs at a square size, not {image_size}")
        size = height
    return hf_resnet.load_resnet_dir(directory, size, device)


def _save_vit(model: Any, directory: Path, processor_config: dict[str, Any] | None) -> Path:
    """A plain ViT: HF's ViT layout. A DINOv2 model transformers' Dinov2 classes express
    exactly: their layout. Any other variant (LayerScale, registers, SwiGLU, average pooling...,
    as UNI or Virchow): timm's Hub layout, the format those models are published in."""
    if not model.config.variant_features:
        return hf.save_pretrained(model, directory, processor_config)
    if dinov2.dinov2_problem(model.config) is None:
        return dinov2.save_dinov2(model, directory, processor_config)
    return save_timm_directory(model, directory, processor_config)


def _read_vit_overridable(
    directory: Path, image_size: ImageSize | None, device: Device, overrides: dict[str, Any]
) -> Any:
    return hf.load_hf_directory(directory, image_size, device, overrides=overrides)


# Directory readers that take --model-arg overrides (ViT architectures).
_OVERRIDABLE = {"vit": _read_vit_overridable, "dinov2": dinov2.load_dinov2_directory}


def _save_deit(model: Any, directory: Path, processor_config: dict[str, Any] | None) -> Path:
    return hf_deit.save_student(
        model, directory, processor_config or hf.default_processor_config(model.config)
    )


for _entry in (
    ModelType(
        name="vit",
        description="HF ViTForImageClassification / ViTModel, timm, .npz, .onnx",
        config_class=ViTConfig,
        model_class=ViT,
        build=ViT,
        accepts=lambda data: isinstance(data, dict) and data.get("model_type") == "vit",
        read_directory=_read_vit,
        save=_save_vit,
        default_processor=hf.default_processor_config,
    ),
    ModelType(
        name="dinov2",
        description="HF Dinov2Model / Dinov2WithRegistersModel (+ ForImageClassification)",
        config_class=ViTConfig,
        model_class=ViT,
        build=ViT,
        accepts=lambda data: (
            isinstance(data, dict) and data.get("model_type") in dinov2.MODEL_TYPES
        ),
        read_directory=dinov2.load_dinov2_directory,
        save=_save_vit,
        default_processor=dinov2.default_processor_config,
    ),
    ModelType(
        name="deit",
        description=f"HF {hf_deit.ARCHITECTURE}",
        config_class=DeiTConfig,
        model_class=DistilledViT,
        build=DistilledViT,
        accepts=hf_deit.is_student_config,
        read_directory=hf_deit.load_student,
        save=_save_deit,
        default_processor=hf.default_processor_config,
    ),
    ModelType(
        name="resnet",
        description="HF ResNetForImageClassification",
        config_class=ResNetConfig,
        model_class=ResNetClassifier,
        build=ResNetClassifier,
        accepts=hf_resnet.is_resnet_config,
        read_directory=_read_resnet,
        save=hf_resnet.save_resnet,
        default_processor=hf_resnet.default_processor_config,
    ),
    ModelType(
        name="vit_mae",
        description=f"HF {hf_mae.ARCHITECTURE} / ViTMAEModel, read as its encoder (a ViT)",
        config_class=MAEConfig,
        model_class=MAE,
        build=build_mae,
        accepts=hf_mae.is_mae_config,
        read_directory=hf_mae.load_mae_encoder,
        save=hf_mae.save_mae,
        default_processor=lambda config: hf.default_processor_config(config.encoder),
    ),
    ModelType(
        name="dpt",
        description=f"HF {hf_dpt.ARCHITECTURE} (a ViT encoder)",
        config_class=SegmenterConfig,
        model_class=Segmenter,
        build=Segmenter,
        accepts=hf_dpt.is_dpt_config,
        read_directory=hf_dpt.load_dpt_directory,
        save=hf_dpt.save_segmenter,
        default_processor=hf_dpt.default_processor_config,
    ),
    ModelType(
        name="vitkit_segmenter",
        description="vitkit segmentation head (linear or DPT) on any ViT backbone",
        config_class=SegmenterConfig,
        model_class=Segmenter,
        build=Segmenter,
        accepts=hf_dpt.is_own_config,
        read_directory=hf_dpt.load_own_directory,
        save=hf_dpt.save_segmenter,
        default_processor=hf_dpt.default_processor_config,
    ),
):
    register(_entry)
