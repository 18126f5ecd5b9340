"""The DeiT student of a distillation run: from a preset (from scratch), a ViT checkpoint
(weights copied, the distillation token from [CLS]) or a student directory, with new heads for
the data (``student_spec_factory``), and the run's settings saying which (``student_settings``).
The network is ``vitkit.models.deit``; its files, ``vitkit.checkpoints.hf_deit``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from vitkit.checkpoints import load_model
from vitkit.checkpoints.hf_deit import save_student
from vitkit.errors import TrainingError
from vitkit.images.processor import ImageProcessor
from vitkit.models.deit import DistilledViT, build_student
from vitkit.models.vit import ViT
from vitkit.training.config import TrainConfig
from vitkit.training.evaluate import ProcessorTransform
from vitkit.training.model_spec import ModelFactory, ModelSpec
from vitkit.training.specs import preset_config


def student_spec_factory(student: str, overrides: dict[str, Any] | None = None) -> ModelFactory:
    """A DeiT student from a preset (from scratch), a ViT checkpoint (weights copied, the
    distillation token from [CLS]) or a student directory, with new heads for the data."""

    def factory(cfg: TrainConfig, id2label: dict[int, str]) -> ModelSpec:
        processor_config: dict[str, Any] | None = None
        if Path(student).exists():
            loaded = load_model(student, image_size=cfg.image_size)
            if isinstance(loaded.model, DistilledViT):
                model = loaded.model
                description = f"DeiT student from {student}"
            elif isinstance(loaded.model, ViT):
                model = DistilledViT.from_vit(loaded.model)
                description = f"DeiT student initialised from {student}"
            else:
                raise TrainingError(
                    f"{student} is a {loaded.model_type} model: a DeiT student starts from a "
                    "ViT or a DeiT student checkpoint, or from a preset name"
                )
            model.reset_head(id2label)
            processor_config = loaded.preprocessing()
        else:
            config = preset_config(student, dict(overrides or {}), cfg.image_size)
            model = build_student(config, id2label)
            description = f"DeiT student {student} from scratch"
        if processor_config is None:
            processor_config = ImageProcessor.for_config(model.config).to_dict()
        saved_processor = processor_config

        def save(trained: nn.Module, directory: Path) -> None:
            assert isinstance(trained, DistilledViT)
            save_student(trained, directory, saved_processor)

        return ModelSpec(
            model=model,
            image_size=model.config.image_hw,
            mean=tuple(processor_config.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(processor_config.get("image_std", (0.5, 0.5, 0.5))),
            eval_transform=ProcessorTransform(ImageProcessor.from_dict(processor_config)),
            save=save,
            load=lambda directory: load_model(directory).model,
            description=description,
            patch_size=model.config.patch_size,
        )

    return factory


def student_settings(cfg: TrainConfig, student: str, overrides: dict[str, Any]) -> TrainConfig:
    """``cfg`` saying what the student is: a preset from scratch (with its overrides; the
    from-scratch recipe) or a checkpoint to start from (the fine-tuning recipe), so the
    settings checks and the plan see the real student."""
    if Path(student).exists():
        return dataclasses.replace(cfg, model=student, from_scratch=False, model_overrides={})
    # a DeiT student is saved in transformers' DeiT layout, which has no convolutional stem
    if cfg.patch_embed == "conv":
        raise TrainingError(
            "--patch-embed conv: a DeiT student is saved in transformers' DeiT layout, which has "
            "no convolutional stem; drop --patch-embed"
        )
    return dataclasses.replace(
        cfg,
        model=None,
        from_scratch=True,
        preset=student,
        model_overrides=dict(overrides),
        patch_embed="linear",
    )
