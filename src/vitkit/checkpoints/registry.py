"""The model registry: every model type vitkit runs, and the formats each is read from.

    model_type -> ModelType(config class, network class, builder, saver, default preprocessing,
                            formats: (Format(name, matches, read), ...))

as transformers' Auto classes and timm's ``register_model`` map a name to a model; each format
is a hook of its type, as timm's ``pretrained_filter_fn`` is of a model. ``load_model(source)``
turns a hub id into its downloaded directory, then asks every format of every type, in
registration order, whether it ``matches`` the path, and the first that does ``read``s it.
Registered here:

- ``vit``: HF ``ViTForImageClassification`` / ``ViTModel`` directories, timm state dicts (files
  or hub-style directories: UNI, UNI2-h, Virchow, Prov-GigaPath, H-optimus-0...) and Google
  ``.npz`` files;
- ``dinov2``: HF ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (and their image classifiers)
  directories (facebook/dinov2-*, owkin/phikon-v2), read into the same ViT;
- ``deit``: the DeiT student, HF ``DeiTForImageClassificationWithTeacher`` directories;
- ``resnet``: the CNN baseline, HF ``ResNetForImageClassification`` directories;
- ``vit_mae``: HF ``ViTMAEForPreTraining`` directories (what ``vitkit pretrain`` writes):
  ``load_model`` gives the encoder, a headless ``ViT``; ``save_model`` of an ``MAE`` writes all;
- ``dpt``, ``vitkit_segmenter``: segmentation models (``vitkit.models.segmentation``), HF
  ``DPTForSemanticSegmentation`` directories and vitkit's own layout for other heads/backbones;
- ``onnx``: an ``.onnx`` export (``vitkit export``) of a vit or deit model, run by onnxruntime.

Every model meets ``vitkit.models.protocol``, which is all the commands rely on, so a registered
type works in predict, embed, eval, serve, slide, explain (where it can) at once.

``--model-arg KEY=VALUE`` (``overrides``) reaches every format the same way: each reader gets
the ``LoadRequest`` and sets them on the config its file gives, with
``vitkit.checkpoints.overrides.apply_overrides`` (an unknown key is refused, naming the file);
a format that cannot honour them (an ONNX graph is fixed at export) refuses them in one line.

Registering a model type (a segmentation model, a slide-level MIL model, ...):

1. the network in ``vitkit/models/`` meeting the protocol (``config`` with ``model_type``,
   ``labels()``, ``image_hw``, ``to_hf_dict()``; ``forward_logits``, ``forward_embedding``,
   ``capabilities``, ``reset_head``, ``num_parameters``, ``flops_per_image``);
2. its reader and saver (config.json + weights) in ``vitkit/checkpoints/<name>.py``;
3. one entry: ``register(ModelType(name=..., ..., formats=(hf_directory(accepts, read),)))``,
   here at the bottom of this file, or from outside vitkit: call ``register`` before loading,
   or declare the entry in your package's metadata so that every ``vitkit`` command (and the
   service) finds it::

       [project.entry-points."vitkit.model_types"]
       toy = "your_package.module:TOY_MODEL_TYPE"

   Entry points are read once, on the first look-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.checkpoints import dinov2, hf, hf_deit, hf_dpt, hf_mae, hf_resnet
from vitkit.checkpoints.directories import read_json
from vitkit.checkpoints.hub import download, source_kind
from vitkit.checkpoints.npz import load_npz
from vitkit.checkpoints.onnx import OnnxModel, is_onnx_file
from vitkit.checkpoints.timm import (
    is_timm_directory,
    load_timm_directory,
    load_timm_file,
    save_timm_directory,
)
from vitkit.checkpoints.weight_files import WEIGHT_SUFFIXES
from vitkit.errors import CheckpointError, UnsupportedOperationError
from vitkit.models.config import ImageSize, ViTConfig, to_pair
from vitkit.models.deit import DeiTConfig, DistilledViT
from vitkit.models.mae import MAE, MAEConfig, build_mae
from vitkit.models.protocol import VisionModel
from vitkit.models.resnet import ResNetClassifier, ResNetConfig
from vitkit.models.segmentation import Segmenter, SegmenterConfig
from vitkit.models.vit import ViT

Device = str | torch.device
ENTRY_POINT_GROUP = "vitkit.model_types"


@dataclass(frozen=True)
class LoadRequest:
    """What every format's reader is asked for: the same for every type and format."""

    image_size: ImageSize | None = None  # resample position embeddings / resize input to this
    device: Device = "cpu"
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --model-arg: config fields


# (path, request) -> (model in eval mode, its preprocessor_config.json or None)
Reader = Callable[[Path, LoadRequest], tuple[Any, dict[str, Any] | None]]
Saver = Callable[[Any, Path, dict[str, Any] | None], Path]


@dataclass(frozen=True)
class Format:
    """One way a model type's checkpoints are stored."""

    name: str  # LoadedModel.format: "hf", "timm", "npz", "onnx", ...
    matches: Callable[[Path], bool]  # a local file or directory in this format? (cheap)
    read: Reader


def hf_directory(accepts: Callable[[Any], bool], read: Reader) -> Format:
    """The Hugging Face layout: a directory whose config.json (a dict) ``accepts``."""

    def matches(path: Path) -> bool:
        config = path / "config.json"
        if not (path.is_dir() and config.is_file()):
            return False
        data = read_json(config)
        return isinstance(data, dict) and accepts(data)

    return Format("hf", matches, read)


@dataclass(frozen=True)
class ModelType:
    """One registered model type: its config and network, how to build, save and preprocess
    for it, and the formats it is read from (the first: its own HF directory)."""

    name: str  # config.model_type
    description: str  # what its checkpoints are, for messages
    config_class: Any  # has from_hf_dict(dict) and the protocol's config fields
    model_class: type[nn.Module]
    build: Callable[[Any], nn.Module]  # config -> a randomly initialised model
    save: Saver  # (model, directory, processor_config) -> directory
    default_processor: Callable[[Any], dict[str, Any]]  # config -> preprocessor_config.json
    formats: tuple[Format, ...]

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        return self.config_class.from_hf_dict(data)


@dataclass
class LoadedModel:
    """A loaded checkpoint: the model (eval mode) and what came with it."""

    model: Any  # meets vitkit.models.protocol.VisionModel
    processor_config: dict[str, Any] | None
    source: str
    format: str  # the Format's name, or "hub" for a Hub id
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
_plugins_loaded = False


def register(model_type: ModelType) -> ModelType:
    """Add (or replace) a model type; returns it."""
    MODEL_TYPES[model_type.name] = model_type
    return model_type


def registered() -> dict[str, ModelType]:
    """Every model type: vitkit's own and those installed packages declare (entry points of
    the group ``vitkit.model_types``, each naming a ``ModelType``), read on the first call."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                declared = entry.load()
            except Exception as error:  # a broken plugin: say which, not a traceback
                raise CheckpointError(
                    f"entry point {entry.name} = {entry.value} ({ENTRY_POINT_GROUP}, declared by "
                    f"{_distribution(entry)}) cannot be loaded: {type(error).__name__}: {error}. "
                    "Fix or uninstall that package"
                ) from error
            if not isinstance(declared, ModelType):
                raise CheckpointError(
                    f"entry point {entry.name} = {entry.value} ({ENTRY_POINT_GROUP}) names a "
                    f"{type(declared).__name__}, not a vitkit.checkpoints.registry.ModelType"
                )
            register(declared)
    return MODEL_TYPES


def _distribution(entry: EntryPoint) -> str:
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an installed package"


def model_type(name: str) -> ModelType:
    """The registered type ``name``; CheckpointError listing the known ones otherwise."""
    types = registered()
    if name not in types:
        raise CheckpointError(f"unknown model type {name!r}: vitkit knows {_known()}")
    return types[name]


def _known() -> str:
    return "; ".join(f"{t.name} ({t.description})" for t in registered().values())


def default_processor_config(config: Any) -> dict[str, Any]:
    """The preprocessing a model of this config expects when its checkpoint names none."""
    return model_type(config.model_type).default_processor(config)


# ---- recognising a source ---------------------------------------------------------------
def local_path(source: str | Path) -> tuple[Path, bool]:
    """(the local file or directory ``source`` names, whether it came from the Hub): a Hub id
    is downloaded; config.json or the weights file of a HF directory name the directory."""
    path = Path(source).expanduser()
    if source_kind(source) == "hub":
        return download(str(source)), True
    if path.is_file() and (path.name == "config.json" or _inside_hf_directory(path)):
        return path.parent, False
    return path, False


def _inside_hf_directory(path: Path) -> bool:
    """A weights file HF wrote (model.safetensors, pytorch_model.bin) next to its config.json."""
    names = ("model.safetensors", "pytorch_model.bin")
    return path.name in names and any(f.name == "hf" and f.matches(path.parent) for f in _formats())


def _formats() -> list[Format]:
    return [fmt for entry in registered().values() for fmt in entry.formats]


def find_format(path: Path) -> tuple[ModelType, Format]:
    """The first registered (type, format) that matches the local ``path``; CheckpointError
    saying what vitkit reads otherwise."""
    for entry in registered().values():
        for fmt in entry.formats:
            if fmt.matches(path):
                return entry, fmt
    raise CheckpointError(_unreadable(path))


def detect_format(source: str | Path) -> str:
    """The format name of ``source`` ("hub" for a Hub id, without downloading it)."""
    if source_kind(source) == "hub":
        return "hub"
    return find_format(local_path(source)[0])[1].name


def _unreadable(path: Path) -> str:
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            return (
                f"{path}: a directory without config.json: give the checkpoint file itself "
                "(.safetensors / .pth / .npz / .onnx) or a Hugging Face directory (config.json + "
                "weights)"
            )
        data = read_json(config_path)
        found = data.get("model_type") if isinstance(data, dict) else None
        architectures = data.get("architectures") if isinstance(data, dict) else None
        return (
            f"{config_path}: model_type {found!r} (architectures {architectures}) is not a model "
            f"vitkit reads, nor a timm config (architecture). It reads: {_known()}"
        )
    if path.is_file():
        return (
            f"{path}: not a checkpoint format vitkit knows (by its suffix {path.suffix or '(none)'}"
            "). Give a HF directory, a .safetensors/.pth/.bin timm state dict, a Google .npz "
            "file, an .onnx export, or a Hub id like google/vit-base-patch16-224."
        )
    return (
        f"{path}: no such file or directory (and not a Hugging Face Hub id like "
        "google/vit-base-patch16-224)"
    )


# ---- loading and saving -----------------------------------------------------------------
def load_model(
    source: str | Path,
    *,
    image_size: ImageSize | None = None,
    device: Device = "cpu",
    num_attention_heads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load any registered model type from any of its formats, in eval mode.

    ``image_size`` resamples a transformer's position embeddings at load time (bicubic,
    antialiased, prefix tokens kept: what timm does when it loads weights at another
    ``img_size``; DINOv2 directories: transformers' rule for their class); for a CNN it only
    sets the resolution its preprocessing resizes to. ``overrides`` set config fields the file
    does not record (``--model-arg KEY=VALUE``): for timm state dicts what the shapes cannot
    tell (``num_attention_heads``, ``global_pool``, ``hidden_act``, ``dynamic_img_size``...; see
    ``vitkit.checkpoints.timm``). ``num_attention_heads`` is the same as that override.
    """
    settings = dict(overrides or {})
    if num_attention_heads is not None:
        settings["num_attention_heads"] = num_attention_heads
    path, from_hub = local_path(source)
    entry, fmt = find_format(path)
    model, processor = fmt.read(path, LoadRequest(image_size, device, settings))
    found = "hub" if from_hub else fmt.name
    resized = image_size is not None
    return LoadedModel(model, processor, str(source), found, entry.name, resized=resized)


def save_model(
    model: nn.Module, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` in its model type's HF layout (transformers loads it with no conversion).

    ``processor_config`` defaults to the model type's preprocessing at the model's resolution.
    """
    if isinstance(model, OnnxModel):
        raise UnsupportedOperationError(
            "an ONNX file is written by `vitkit export`, and is not converted back"
        )
    entry = model_type(getattr(getattr(model, "config", None), "model_type", "?"))
    if not isinstance(model, entry.model_class):
        raise UnsupportedOperationError(
            f"{type(model).__name__} is not a {entry.name} model vitkit can save"
        )
    return entry.save(model, Path(directory), processor_config)


def build_model(config: Any) -> VisionModel:
    """A randomly initialised model of ``config``'s registered type."""
    model: Any = model_type(config.model_type).build(config)
    return model


# ---- the registered types' readers and savers ---------------------------------------------
def _read_vit(directory: Path, request: LoadRequest) -> Any:
    return hf.load_hf_directory(
        directory, request.image_size, request.device, overrides=request.overrides
    )


def _read_timm_directory(directory: Path, request: LoadRequest) -> Any:
    overrides = dict(request.overrides)
    return load_timm_directory(directory, request.image_size, request.device, overrides=overrides)


def _read_timm_file(path: Path, request: LoadRequest) -> Any:
    overrides = dict(request.overrides)
    return load_timm_file(path, request.image_size, request.device, overrides=overrides), None


def _read_npz(path: Path, request: LoadRequest) -> Any:
    return load_npz(path, request.image_size, request.device, overrides=request.overrides), None


def _read_dinov2(directory: Path, request: LoadRequest) -> Any:
    overrides = dict(request.overrides)
    return dinov2.load_dinov2_directory(directory, request.image_size, request.device, overrides)


def _read_deit(directory: Path, request: LoadRequest) -> Any:
    return hf_deit.load_student(
        directory, request.image_size, request.device, overrides=request.overrides
    )


def _read_resnet(directory: Path, request: LoadRequest) -> Any:
    size = None
    if request.image_size is not None:
        height, width = to_pair(request.image_size)
        if height != width:
            raise CheckpointError(
                f"{directory}: a ResNet runs at a square size, not {request.image_size}"
            )
        size = height
    return hf_resnet.load_resnet_dir(directory, size, request.device, overrides=request.overrides)


def _read_mae(directory: Path, request: LoadRequest) -> Any:
    return hf_mae.load_mae_encoder(
        directory, request.image_size, request.device, overrides=request.overrides
    )


def _read_dpt(directory: Path, request: LoadRequest) -> Any:
    return hf_dpt.load_dpt_directory(
        directory, request.image_size, request.device, overrides=request.overrides
    )


def _read_segmenter(directory: Path, request: LoadRequest) -> Any:
    return hf_dpt.load_own_directory(
        directory, request.image_size, request.device, overrides=request.overrides
    )


def _read_onnx(path: Path, request: LoadRequest) -> Any:
    if request.overrides:
        raise CheckpointError(
            f"{path}: --model-arg ({', '.join(request.overrides)}) cannot change an ONNX graph: "
            "it is fixed at export (load the checkpoint with --model-arg, then vitkit export)"
        )
    if request.image_size is not None:
        raise CheckpointError(
            f"{path}: an ONNX model runs at the size it was exported at; re-export it for "
            "another image size (vitkit export --image-size N)"
        )

    def read_config(data: dict[str, Any]) -> Any:
        return model_type(data.get("model_type", "vit")).config_from_dict(data)

    model = OnnxModel(path, read_config=read_config)
    return model, model.processor_config


def _save_vit(model: Any, directory: Path, processor_config: dict[str, Any] | None) -> Path:
    """A plain ViT: HF's ViT layout. A DINOv2 model transformers' Dinov2 classes express
    exactly: their layout. Any other variant (LayerScale, registers, SwiGLU, average pooling...,
    as UNI or Virchow): timm's Hub layout, the format those models are published in."""
    if not model.config.variant_features:
        return hf.save_pretrained(model, directory, processor_config)
    if dinov2.dinov2_problem(model.config) is None:
        return dinov2.save_dinov2(model, directory, processor_config)
    return save_timm_directory(model, directory, processor_config)


def _save_deit(model: Any, directory: Path, processor_config: dict[str, Any] | None) -> Path:
    return hf_deit.save_student(
        model, directory, processor_config or hf.default_processor_config(model.config)
    )


def _is_timm_file(path: Path) -> bool:
    # .pth.tar: what timm's train script names its checkpoints
    return path.is_file() and (path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".pth.tar"))


def _cannot_save(model: Any, directory: Path, processor_config: dict[str, Any] | None) -> Path:
    raise UnsupportedOperationError("an ONNX file is written by `vitkit export`")


def _onnx_processor(config: Any) -> dict[str, Any]:
    return default_processor_config(config)  # the exported model's own type's


def _cannot_build(config: Any) -> nn.Module:
    raise UnsupportedOperationError("an ONNX model is exported (vitkit export), not built")


for _entry in (
    ModelType(
        name="vit",
        description="HF ViTForImageClassification / ViTModel, timm, .npz",
        config_class=ViTConfig,
        model_class=ViT,
        build=ViT,
        save=_save_vit,
        default_processor=hf.default_processor_config,
        formats=(
            hf_directory(
                lambda data: isinstance(data, dict) and data.get("model_type") == "vit", _read_vit
            ),
            Format("timm", is_timm_directory, _read_timm_directory),
            Format("npz", lambda path: path.is_file() and path.suffix == ".npz", _read_npz),
            Format("timm", _is_timm_file, _read_timm_file),
        ),
    ),
    ModelType(
        name="dinov2",
        description="HF Dinov2Model / Dinov2WithRegistersModel (+ ForImageClassification)",
        config_class=ViTConfig,
        model_class=ViT,
        build=ViT,
        save=_save_vit,
        default_processor=dinov2.default_processor_config,
        formats=(
            hf_directory(
                lambda data: (
                    isinstance(data, dict) and data.get("model_type") in dinov2.MODEL_TYPES
                ),
                _read_dinov2,
            ),
        ),
    ),
    ModelType(
        name="deit",
        description=f"HF {hf_deit.ARCHITECTURE}",
        config_class=DeiTConfig,
        model_class=DistilledViT,
        build=DistilledViT,
        save=_save_deit,
        default_processor=hf.default_processor_config,
        formats=(hf_directory(hf_deit.is_student_config, _read_deit),),
    ),
    ModelType(
        name="resnet",
        description="HF ResNetForImageClassification",
        config_class=ResNetConfig,
        model_class=ResNetClassifier,
        build=ResNetClassifier,
        save=hf_resnet.save_resnet,
        default_processor=hf_resnet.default_processor_config,
        formats=(hf_directory(hf_resnet.is_resnet_config, _read_resnet),),
    ),
    ModelType(
        name="vit_mae",
        description=f"HF {hf_mae.ARCHITECTURE} / ViTMAEModel, read as its encoder (a ViT)",
        config_class=MAEConfig,
        model_class=MAE,
        build=build_mae,
        save=hf_mae.save_mae,
        default_processor=lambda config: hf.default_processor_config(config.encoder),
        formats=(hf_directory(hf_mae.is_mae_config, _read_mae),),
    ),
    ModelType(
        name="onnx",
        description="an .onnx export (vitkit export) of a vit or deit model, run by onnxruntime",
        config_class=None,
        model_class=OnnxModel,
        build=_cannot_build,
        save=_cannot_save,
        default_processor=_onnx_processor,
        formats=(Format("onnx", lambda path: path.is_file() and is_onnx_file(path), _read_onnx),),
    ),
    ModelType(
        name="dpt",
        description=f"HF {hf_dpt.ARCHITECTURE} (a ViT encoder)",
        config_class=SegmenterConfig,
        model_class=Segmenter,
        build=Segmenter,
        save=hf_dpt.save_segmenter,
        default_processor=hf_dpt.default_processor_config,
        formats=(hf_directory(hf_dpt.is_dpt_config, _read_dpt),),
    ),
    ModelType(
        name="vitkit_segmenter",
        description="vitkit segmentation head (linear or DPT) on any ViT backbone",
        config_class=SegmenterConfig,
        model_class=Segmenter,
        build=Segmenter,
        save=hf_dpt.save_segmenter,
        default_processor=hf_dpt.default_processor_config,
        formats=(hf_directory(hf_dpt.is_own_config, _read_segmenter),),
    ),
):
    register(_entry)
