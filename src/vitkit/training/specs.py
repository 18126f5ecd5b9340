"""The networks a classification run can train, each as a ``ModelSpec`` (module, input size,
normalisation, evaluation preprocessing, how it is saved and loaded back).

- ``vit_model_spec``: a ViT from any checkpoint vitkit loads (``vitkit.checkpoints.load_model``)
  or from a preset (``--from-scratch``), with a new zero-initialised head (the paper's
  fine-tuning recipe); saved as a Hugging Face directory.
- ``resnet_model_spec``: the CNN baseline (``vitkit compare``), saved as an HF ResNet directory.

``ModelSpec`` (what the trainer needs to know about a network) and ``ModelFactory`` (``(cfg,
id2label) -> ModelSpec``: what a task builder calls) are ``vitkit.training.model_spec``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vitkit.checkpoints import load_model, save_pretrained
from vitkit.checkpoints.hf_resnet import (
    load_resnet,
    load_resnet_dir,
    resnet_processor_config,
    save_resnet,
)
from vitkit.errors import TrainingError
from vitkit.images.processor import ImageProcessor
from vitkit.models.config import preset
from vitkit.models.resnet import IMAGENET_MEAN, IMAGENET_STD, build_resnet
from vitkit.models.vit import ViT
from vitkit.training.config import TrainConfig
from vitkit.training.evaluate import ProcessorTransform
from vitkit.training.model_spec import ModelFactory, ModelSpec

__all__ = [
    "preset_config",
    "resnet_model_spec",
    "vit_model_spec",
]


def preset_config(name: str, overrides: dict[str, Any], image_size: int | None) -> Any:
    """A ViTConfig from a preset name and ``--model-arg`` fields; one clear error otherwise."""
    fields = dict(overrides)
    if image_size is not None:
        fields["image_size"] = image_size
    try:
        return preset(name, **fields)
    except (TypeError, ValueError) as error:
        raise TrainingError(
            f"--preset {name} with --model-arg {overrides}: {error} "
            "(--model-arg takes ViTConfig fields such as hidden_size=64, num_hidden_layers=4)"
        ) from None


def scratch_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """A from-scratch ViT's config fields: ``--model-arg``s, then the recipe's tokeniser."""
    fields = dict(cfg.model_overrides)
    if cfg.patch_embed is not None:
        fields.setdefault("patch_embed", cfg.patch_embed)
    return fields


def vit_model_spec(cfg: TrainConfig, id2label: dict[int, str]) -> ModelSpec:
    """A ViT from a checkpoint (or a preset, from scratch) with a new zero-initialised head."""
    if cfg.from_scratch:
        model = ViT(preset_config(cfg.preset, scratch_overrides(cfg), cfg.image_size))
        processor = ImageProcessor.for_config(model.config)
        description = f"{cfg.preset} from scratch"
    else:
        if cfg.model is None:
            raise TrainingError(
                "name a checkpoint with --model, or pass --from-scratch --preset NAME"
            )
        # --model-arg with a checkpoint: what its file does not record (a timm state dict's
        # head count, say); load_model refuses it, naming the fix, for formats that record all.
        loaded = load_model(cfg.model, image_size=cfg.image_size, overrides=cfg.model_overrides)
        model = loaded.model
        processor = ImageProcessor.from_dict(loaded.preprocessing())
        description = f"{cfg.model} fine-tuned"
    model.reset_head(id2label)
    if cfg.freeze_backbone:  # linear probe: only the new head learns
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("head."))
    processor_config = processor.to_dict()

    def save(trained: nn.Module, directory: Path) -> None:
        save_pretrained(trained, directory, processor_config=processor_config)

    return ModelSpec(
        model=model,
        image_size=model.config.image_hw,
        mean=tuple(processor_config.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(processor_config.get("image_std", (0.5, 0.5, 0.5))),
        eval_transform=ProcessorTransform(processor),
        save=save,
        load=lambda directory: load_model(directory).model,  # best/ records its whole config
        description=description,
        patch_size=getattr(model.config, "patch_size", None),  # a ViT or DeiT checkpoint
    )


def resnet_model_spec(arch: str, weights: str | None) -> ModelFactory:
    """A ``ModelFactory`` for the CNN baseline, saved as an HF ResNet directory."""

    def factory(cfg: TrainConfig, id2label: dict[int, str]) -> ModelSpec:
        size = cfg.image_size or 224
        if weights:
            model = load_resnet(weights, arch, id2label)
            model.config.image_size = size
            description = f"{model.config.arch} from {weights}"
        else:
            model = build_resnet(arch, id2label, image_size=size)
            description = f"{arch} from scratch"
        processor_config = resnet_processor_config(size)

        def save(trained: nn.Module, directory: Path) -> None:
            save_resnet(trained, directory, processor_config)  # type: ignore[arg-type]

        return ModelSpec(
            model=model,
            image_size=(size, size),
            mean=tuple(IMAGENET_MEAN),
            std=tuple(IMAGENET_STD),
            eval_transform=ProcessorTransform(ImageProcessor.from_dict(processor_config)),
            save=save,
            load=lambda directory: load_resnet_dir(directory)[0],
            description=description,
        )

    return factory
