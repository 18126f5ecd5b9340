"""Every checkpoint format in, Hugging Face directories out, for every registered model type.

``load_model(source)`` (see ``vitkit.checkpoints.registry``: each format is a hook of its
model type) recognises:

- a directory with a HF ``config.json`` of a registered model type (model.safetensors or
  pytorch_model.bin, also sharded): ``vit`` (``ViTForImageClassification`` or a bare
  ``ViTModel``), ``deit`` (``DeiTForImageClassificationWithTeacher``), ``resnet``
  (``ResNetForImageClassification``);
- a directory timm pushed to the Hub (config.json with "architecture", plus weights): a ViT;
- a ``.npz`` file: Google's vit_jax release naming, with or without ``opt/target/``;
- an ``.onnx`` file written by ``vitkit export`` (config and preprocessing in its metadata);
- a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` / ``.pth.tar`` file: a timm
  VisionTransformer state dict (bare or inside a training checkpoint), architecture read off the
  tensor shapes;
- anything else shaped "owner/name[@revision]" that is not a local path: a Hugging Face Hub id,
  downloaded into huggingface_hub's cache (or taken from it offline).

``save_model(model, directory)`` writes any registered model in the HF layout transformers loads
with no conversion (``save_pretrained`` is the same function under its 0.1 name).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from vitkit.checkpoints.registry import (
    MODEL_TYPES,
    Format,
    LoadedModel,
    LoadRequest,
    ModelType,
    default_processor_config,
    detect_format,
    hf_directory,
    load_model,
    model_type,
    register,
    registered,
    save_model,
)
from vitkit.errors import CheckpointError

__all__ = [
    "MODEL_TYPES",
    "CheckpointError",
    "Format",
    "LoadRequest",
    "LoadedModel",
    "ModelType",
    "default_processor_config",
    "detect_format",
    "hf_directory",
    "imagenet_labels",
    "load_model",
    "model_type",
    "register",
    "registered",
    "save_model",
    "save_pretrained",
]

save_pretrained = save_model  # the vitkit 0.1 name


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order, as HF's google/vit-* id2label
    spells them ("tench, Tinca tinca").

    The list is the WordNet lemmas of the ILSVRC-2012 synsets, taken from the files timm ships
    (timm/data/_info/imagenet_synsets.txt + imagenet_synset_to_lemma.txt, Apache-2.0).
    """
    return list(_imagenet_labels())


@lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    path = Path(__file__).resolve().parent.parent / "assets" / "imagenet1k_labels.txt"
    labels = tuple(path.read_text(encoding="utf-8").splitlines())
    if len(labels) != 1000:
        raise RuntimeError(f"{path} has {len(labels)} labels, not 1000")
    return labels
