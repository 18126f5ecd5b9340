"""The networks a segmentation run trains, each as a ``ModelSpec``.

- ``segmenter_spec``: a ``Segmenter`` (DPT or linear head) on any ViT vitkit loads (a HF ViT,
  DINOv2, a timm foundation model, an MAE encoder from ``vitkit pretrain``), a segmentation
  checkpoint to fine-tune further (its classifier replaced when the classes differ), or a preset
  from scratch. Saved in transformers' DPT layout where it expresses the model, vitkit's own
  otherwise (``vitkit.checkpoints.hf_dpt``).
- ``unet_spec``: the CNN baseline, segmentation_models_pytorch's U-Net (``vitkit compare``),
  trained by the same loop; saved with smp's own ``save_pretrained``.

Both preprocess with ``DenseProcessor`` (transformers' DPTImageProcessor) at the training size.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from vitkit.checkpoints import load_model, save_model
from vitkit.errors import TrainingError
from vitkit.images.processor.dense import DenseProcessor
from vitkit.models.dpt import DPTHeadConfig
from vitkit.models.resnet import IMAGENET_MEAN, IMAGENET_STD
from vitkit.models.segmentation import Segmenter, SegmenterConfig
from vitkit.models.vit import ViT
from vitkit.training.config import TrainConfig
from vitkit.training.model_spec import ModelSpec
from vitkit.training.seg_augment import JointEvalTransform
from vitkit.training.seg_config import SegmentationSettings
from vitkit.training.specs import preset_config


def _backbone(cfg: TrainConfig) -> tuple[Any, dict[str, Any], str, str]:
    """(model, preprocessing, registry type, description) of ``--model`` or the preset."""
    if cfg.from_scratch:
        model = ViT(preset_config(cfg.preset, cfg.model_overrides, cfg.image_size))
        processor = DenseProcessor(size=model.config.image_hw, resample=2).to_dict()
        return model, processor, "vit", f"{cfg.preset} from scratch"
    if cfg.model is None:
        raise TrainingError("name a checkpoint with --model, or pass --from-scratch --preset NAME")
    loaded = load_model(cfg.model, image_size=cfg.image_size, overrides=cfg.model_overrides)
    if not isinstance(loaded.model, ViT | Segmenter):
        raise TrainingError(
            f"--model {cfg.model}: a {loaded.model_type} model; segmentation heads sit on ViT "
            "backbones (HF ViT, DINOv2, timm foundation models, MAE encoders) or a segmenter"
        )
    return loaded.model, loaded.preprocessing(), loaded.model_type, f"{cfg.model} fine-tuned"


def _segmenter(
    backbone: Any, backbone_type: str, settings: SegmentationSettings, id2label: dict[int, str]
) -> Segmenter:
    """``backbone`` (a ViT or a segmenter) with a head for ``id2label``."""
    if isinstance(backbone, Segmenter):
        if backbone.config.head != settings.seg_head:
            raise TrainingError(
                f"--seg-head {settings.seg_head}: the checkpoint is a {backbone.config.head} "
                "segmenter; keep its head or start from its backbone"
            )
        if backbone.config.id2label != id2label:
            backbone.reset_head(id2label)
        return backbone
    vit = backbone.config
    dpt = (
        DPTHeadConfig.for_depth(vit.num_hidden_layers, vit.hidden_size, vit.patch_size)
        if settings.seg_head == "dpt"
        else None
    )
    try:
        config = SegmenterConfig(
            backbone=vit,
            head=settings.seg_head,
            id2label=id2label,
            dpt=dpt,
            linear_layers=settings.linear_layers,
            backbone_type="vit" if backbone_type == "vit_mae" else backbone_type,
        )
    except ValueError as error:
        raise TrainingError(f"segmentation head: {error}") from None
    return Segmenter(config, backbone=backbone)


def segmenter_spec(
    cfg: TrainConfig, settings: SegmentationSettings, id2label: dict[int, str]
) -> ModelSpec:
    """A ViT backbone with a new segmentation head (or a segmenter), as the settings say."""
    backbone, preprocessing, backbone_type, description = _backbone(cfg)
    model = _segmenter(backbone, backbone_type, settings, id2label)
    if cfg.freeze_backbone:  # linear probe: the head alone learns
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)
    processor = DenseProcessor.from_dict(preprocessing, size=model.config.image_hw)
    processor_config = processor.to_dict()

    def save(trained: nn.Module, directory: Path) -> None:
        save_model(trained, directory, processor_config=processor_config)

    return ModelSpec(
        model=model,
        image_size=model.config.image_hw,
        mean=processor.image_mean,
        std=processor.image_std,
        eval_transform=JointEvalTransform(processor),  # type: ignore[arg-type]
        save=save,
        load=lambda directory: load_model(directory).model,
        description=f"{description}, {settings.seg_head} head",
        patch_size=model.config.patch_size,
    )


def unet_spec(
    encoder: str = "resnet18", image_size: int = 224
) -> Callable[[TrainConfig, SegmentationSettings, dict[int, str]], ModelSpec]:
    """A ``(cfg, settings, id2label) -> ModelSpec`` factory for smp's U-Net from scratch."""

    def factory(
        cfg: TrainConfig, settings: SegmentationSettings, id2label: dict[int, str]
    ) -> ModelSpec:
        if importlib.util.find_spec("segmentation_models_pytorch") is None:
            raise TrainingError(
                "the U-Net baseline needs segmentation_models_pytorch: "
                "pip install 'vitkit[segmentation]'"
            )
        import segmentation_models_pytorch as smp

        size = cfg.image_size or image_size
        model = smp.Unet(encoder_name=encoder, encoder_weights=None, classes=len(id2label))
        processor = DenseProcessor(
            size=(size, size),
            resample=2,
            image_mean=tuple(IMAGENET_MEAN),
            image_std=tuple(IMAGENET_STD),
        )
        processor_config = processor.to_dict()

        def save(trained: nn.Module, directory: Path) -> None:
            directory.mkdir(parents=True, exist_ok=True)
            trained.save_pretrained(str(directory))  # type: ignore[operator]
            (directory / "preprocessor_config.json").write_text(_json(processor_config))

        return ModelSpec(
            model=model,
            image_size=(size, size),
            mean=processor.image_mean,
            std=processor.image_std,
            eval_transform=JointEvalTransform(processor),  # type: ignore[arg-type]
            save=save,
            load=lambda directory: smp.from_pretrained(str(directory)),
            description=f"U-Net ({encoder}) from scratch",
        )

    return factory


def _json(data: dict[str, Any]) -> str:

    return json.dumps(data, indent=2, sort_keys=True) + "\n"
