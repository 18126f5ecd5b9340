"""Segmentation checkpoints: transformers' ``DPTForSemanticSegmentation`` directories, and
vitkit's own layout for heads on any other backbone.

**DPT layout** (``Intel/dpt-large-ade``; model_type "dpt"): the ViT encoder under ``dpt.`` in
transformers' ViT names (``dpt.embeddings.*``, ``dpt.encoder.layer.N.attention.attention.query``,
``dpt.layernorm``), and the decoder under its own names (``neck.*``, ``head.head.*``,
``auxiliary_head.head.*``), which ``vitkit.models.dpt`` keeps. vitkit reads them into a
``Segmenter`` and writes a DPT on a plain ViT back in the same layout, so transformers loads what
vitkit trains with no conversion. Hybrid (ResNet-stem) DPTs and DPTs on other backbones
(``backbone_config``) are refused with a message.

**vitkit layout** (model_type "vitkit_segmenter"), for what transformers' DPT cannot express (a
linear head; a backbone with registers, LayerScale, SwiGLU, no [CLS]...)::

    config.json               {"model_type": "vitkit_segmenter", "head": "dpt" | "linear",
                               "id2label", "label2id", "dpt": {DPTConfig's decoder fields} | null,
                               "linear_layers", "semantic_loss_ignore_index",
                               "backbone_type": the registry type the backbone came from,
                               "backbone": the backbone's ViT config.json (variant fields included)}
    model.safetensors         vitkit's own parameter names: backbone.* (timm's names:
                               backbone.blocks.N.attn.qkv.weight ...) and decoder.*
    preprocessor_config.json  a DPTImageProcessor config (the backbone's mean, std, resampling)

Both are written atomically (``directories.save_directory``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vitkit.checkpoints.directories import check_replaceable, read_json, save_directory
from vitkit.checkpoints.hf import hf_reader, hf_state_dict, read_weights
from vitkit.checkpoints.hub import download, source_kind
from vitkit.checkpoints.key_mapping import KeyReader, load_checked
from vitkit.checkpoints.overrides import apply_overrides
from vitkit.checkpoints.weight_files import StateDict
from vitkit.errors import CheckpointError
from vitkit.images.processor.dense import DenseProcessor
from vitkit.models.config import ImageSize, ViTConfig, to_pair
from vitkit.models.dpt import DPTHeadConfig
from vitkit.models.segmentation import (
    DPT_MODEL_TYPE,
    OWN_MODEL_TYPE,
    Segmenter,
    SegmenterConfig,
)

ARCHITECTURE = "DPTForSemanticSegmentation"
# The ViT fields of a DPTConfig (transformers names them as ViTConfig does).
_ENCODER_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
)
_DECODER_PARTS = {
    "neck.": "decoder.neck.",
    "head.": "decoder.head.",
    "auxiliary_head.": "decoder.auxiliary_head.",
}


def is_dpt_config(data: Any) -> bool:
    return isinstance(data, dict) and data.get("model_type") == DPT_MODEL_TYPE


def is_own_config(data: Any) -> bool:
    return isinstance(data, dict) and data.get("model_type") == OWN_MODEL_TYPE


def is_segmentation_checkpoint(source: str) -> bool:
    """Whether ``source`` (a directory, its config.json, or a Hub id) holds a segmentation model:
    decided from config.json alone, before any weights are read."""
    path = Path(source).expanduser()
    if path.name == "config.json" and path.is_file():
        path = path.parent
    if not path.is_dir():
        if source_kind(source) != "hub":
            return False
        path = download(source)
    config = path / "config.json"
    if not config.is_file():
        return False
    data = read_json(config)
    return is_dpt_config(data) or is_own_config(data)


# ---- transformers' DPT layout ---------------------------------------------------------------
def dpt_config(data: dict[str, Any], path: Path) -> SegmenterConfig:
    """A SegmenterConfig from a DPTForSemanticSegmentation config.json; errors name the file."""
    if data.get("is_hybrid") or data.get("backbone_config") or data.get("backbone"):
        raise CheckpointError(
            f"{path}: a DPT on a {'hybrid ResNet stem' if data.get('is_hybrid') else 'separate backbone'}"
            ": vitkit reads DPT on a plain ViT encoder (Intel/dpt-large-ade's layout)"
        )
    architectures = data.get("architectures") or [ARCHITECTURE]
    if ARCHITECTURE not in architectures:
        raise CheckpointError(
            f"{path}: {architectures} is not {ARCHITECTURE} (depth estimation is not a "
            "segmentation model)"
        )
    encoder = {key: data[key] for key in _ENCODER_FIELDS if data.get(key) is not None}
    encoder["architectures"] = ["ViTModel"]
    encoder["add_pooling_layer"] = False
    try:
        backbone = ViTConfig.from_hf_dict(encoder)
        head = DPTHeadConfig.from_dict(data)
        id2label = data.get("id2label") or {
            i: f"LABEL_{i}" for i in range(int(data.get("num_labels", 2)))
        }
        return SegmenterConfig(
            backbone=backbone,
            head="dpt",
            id2label=id2label,
            dpt=head,
            ignore_index=int(data.get("semantic_loss_ignore_index", 255)),
        )
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: not a valid DPT config ({error})") from error


def dpt_config_dict(config: SegmenterConfig) -> dict[str, Any]:
    """The config.json transformers' DPTForSemanticSegmentation reads."""
    assert config.dpt is not None
    backbone = config.backbone.to_hf_dict()
    data: dict[str, Any] = {key: backbone[key] for key in _ENCODER_FIELDS}
    data.update(config.dpt.to_dict())
    labels = config.labels()
    data.update(
        {
            "model_type": DPT_MODEL_TYPE,
            "architectures": [ARCHITECTURE],
            "is_hybrid": False,
            "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)},
            "semantic_loss_ignore_index": config.ignore_index,
        }
    )
    return data


def load_dpt_directory(
    directory: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Segmenter, dict[str, Any] | None]:
    """(model, preprocessor config) from a directory transformers wrote."""
    config_path = directory / "config.json"
    config = dpt_config(read_json(config_path), config_path)
    config = apply_overrides(config, overrides, config_path)
    _, tensors = read_weights(directory)
    reader = _dpt_reader(tensors, config)
    model = _build(config, reader, directory, "the DPT its config describes")
    processor = _processor_config(directory)
    return _at_size(model, image_size, directory), processor


def _dpt_reader(tensors: StateDict, config: SegmenterConfig) -> KeyReader:
    """transformers' names -> vitkit's: the encoder through the ViT mapping, the decoder by
    prefix. The encoder's pooler (a DPTModel saved with one) is dropped: logits never read it."""
    encoder = {
        "vit." + name[len("dpt.") :]: tensor
        for name, tensor in tensors.items()
        if name.startswith("dpt.") and not name.startswith("dpt.pooler.")
    }
    vit_reader = hf_reader(encoder, config.backbone)
    reader = KeyReader({})
    for name, tensor in vit_reader.tensors.items():
        reader.put("backbone." + name, tensor, "dpt." + vit_reader.origins[name][len("vit.") :])
    reader.missing = ["dpt." + name[len("vit.") :] for name in vit_reader.missing]
    leftovers = {"dpt." + n[len("vit.") :]: t for n, t in vit_reader.foreign.items()}
    for name, tensor in tensors.items():
        part = next((p for p in _DECODER_PARTS if name.startswith(p)), None)
        if part is not None:
            reader.put(_DECODER_PARTS[part] + name[len(part) :], tensor, name)
        elif not name.startswith("dpt."):
            leftovers[name] = tensor
    reader.foreign = leftovers
    return reader


def dpt_state_dict(model: Segmenter) -> StateDict:
    """The model's tensors under transformers' DPT names."""
    out = {"dpt." + name: tensor for name, tensor in hf_state_dict(model.backbone).items()}
    for name, tensor in model.decoder.state_dict().items():
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def save_dpt(
    model: Segmenter, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write a DPT on a plain ViT as a directory transformers' DPTForSemanticSegmentation loads."""
    target = Path(directory).expanduser().absolute()
    if not model.config.in_dpt_layout:
        raise CheckpointError(
            f"{target}: transformers' DPT cannot express this model (a {model.config.head} head"
            f" on a {model.config.backbone_type} backbone): save_segmenter writes vitkit's layout"
        )
    check_replaceable(target)
    processor = processor_config or default_processor_config(model.config)
    return save_directory(target, dpt_config_dict(model.config), dpt_state_dict(model), processor)


# ---- vitkit's own layout --------------------------------------------------------------------
def load_own_directory(
    directory: Path,
    image_size: ImageSize | None = None,
    device: str | torch.device = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Segmenter, dict[str, Any] | None]:
    config_path = directory / "config.json"
    data = read_json(config_path)
    try:
        config = SegmenterConfig.from_hf_dict(data)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{config_path}: not a valid vitkit segmenter config ({error})"
        ) from error
    config = apply_overrides(config, overrides, config_path)
    _, tensors = read_weights(directory)
    reader = KeyReader(tensors)
    for name in list(tensors):
        reader.move(name, name)
    model = _build(config, reader, directory, "the segmenter its config describes")
    return _at_size(model, image_size, directory), _processor_config(directory)


def save_own(
    model: Segmenter, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """Write any Segmenter in vitkit's layout (see the module docstring)."""
    target = Path(directory).expanduser().absolute()
    check_replaceable(target)
    tensors = {n: t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}
    processor = processor_config or default_processor_config(model.config)
    return save_directory(target, model.config.to_hf_dict(), tensors, processor)


def save_segmenter(
    model: Segmenter, directory: str | Path, processor_config: dict[str, Any] | None = None
) -> Path:
    """transformers' DPT layout where it expresses the model, vitkit's otherwise."""
    if model.config.in_dpt_layout:
        return save_dpt(model, directory, processor_config)
    return save_own(model, directory, processor_config)


# ---- shared ---------------------------------------------------------------------------------
def default_processor_config(config: SegmenterConfig) -> dict[str, Any]:
    """DPTImageProcessor at the model's resolution (mean = std = 0.5, bicubic: its defaults)."""
    return DenseProcessor(size=config.image_hw).to_dict()


def _build(config: SegmenterConfig, reader: KeyReader, source: Path, what: str) -> Segmenter:
    with torch.device("meta"):
        model = Segmenter(config)
    for name in model.state_dict():
        # BatchNorm's step counter: some files leave it out; it never changes eval outputs.
        if name.endswith(".num_batches_tracked") and name not in reader.tensors:
            reader.put(name, torch.tensor(0, dtype=torch.long), name)
    load_checked(model, reader, source, what)
    return model.eval()


def _at_size(model: Segmenter, image_size: ImageSize | None, source: Path) -> Segmenter:
    """The model run at another resolution: position embeddings are resized at call time
    (transformers DPT's rule), so only the recorded size changes."""
    if image_size is None:
        return model
    height, width = to_pair(image_size)
    patch = model.config.patch_size
    if height % patch or width % patch:
        raise CheckpointError(
            f"{source}: image size {height}x{width} is not a multiple of the patch size {patch}"
        )
    return model


def _processor_config(directory: Path) -> dict[str, Any] | None:
    path = directory / "preprocessor_config.json"
    return read_json(path) if path.is_file() else None
