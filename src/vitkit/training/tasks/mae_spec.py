"""The network MAE pre-training trains, as a ``ModelSpec``: built from a preset (random
weights), from any ViT checkpoint vitkit loads (its head and pooler dropped, a new decoder), or
continued from an MAE directory with its decoder; saved as a ViTMAEForPreTraining directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitkit.checkpoints import load_model
from vitkit.checkpoints.hf import default_processor_config
from vitkit.checkpoints.hf_mae import (
    has_decoder,
    is_mae_directory,
    load_mae,
    load_mae_encoder,
    save_mae,
)
from vitkit.checkpoints.registry import resized_processor_config
from vitkit.errors import TrainingError
from vitkit.images.processor import ImageProcessor
from vitkit.models.config import ViTConfig
from vitkit.models.mae import MAE, MAEConfig, build_mae, decoder_defaults
from vitkit.models.vit import ViT
from vitkit.training.config import TrainConfig
from vitkit.training.evaluate import ProcessorTransform
from vitkit.training.model_spec import ModelSpec
from vitkit.training.specs import preset_config
from vitkit.training.tasks.mae_config import (
    PAPER_DECODER_DEPTH,
    PAPER_DECODER_WIDTH,
    PretrainConfig,
)


def mae_model_spec(cfg: TrainConfig, settings: PretrainConfig) -> ModelSpec:
    """The MAE to pre-train (see the module docstring), its preprocessing and how it is saved."""
    model, processor_config, description = _build_mae(cfg, settings)
    encoder_config = model.config.encoder
    if processor_config is None:
        processor_config = default_processor_config(encoder_config)
    elif cfg.image_size is not None:
        processor_config = resized_processor_config(processor_config, encoder_config.image_hw)
    processor = ImageProcessor.from_dict(processor_config)
    saved_processor = processor.to_dict()

    def save(trained: torch.nn.Module, directory: Path) -> None:
        assert isinstance(trained, MAE)
        save_mae(trained, directory, saved_processor)

    def reload(directory: Path) -> torch.nn.Module:
        return load_mae(directory)[0]

    return ModelSpec(
        model=model,
        image_size=model.config.encoder.image_hw,
        mean=tuple(saved_processor.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(saved_processor.get("image_std", (0.5, 0.5, 0.5))),
        eval_transform=ProcessorTransform(processor),
        save=save,
        load=reload,
        description=description,
        patch_size=model.config.encoder.patch_size,
    )


def _build_mae(
    cfg: TrainConfig, settings: PretrainConfig
) -> tuple[MAE, dict[str, Any] | None, str]:
    """(model, the checkpoint's preprocessor config or None, description)."""
    if cfg.model is None:
        config = preset_config(cfg.preset, cfg.model_overrides, cfg.image_size)
        model = build_mae(_mae_config(MAEConfig.plain_encoder(config), settings))
        return model, None, f"MAE, {cfg.preset} from scratch, decoder {_decoder_text(model.config)}"
    source = Path(cfg.model).expanduser()
    if is_mae_directory(source) and has_decoder(source):
        return _continue_mae(source, cfg, settings)
    if is_mae_directory(source):  # an encoder alone (ViTMAEModel): a new decoder on it
        encoder, processor_config = load_mae_encoder(source, cfg.image_size)
    else:
        loaded = load_model(str(cfg.model), image_size=cfg.image_size)
        encoder = headless_encoder(loaded.model, cfg.model)
        processor_config = loaded.preprocessing()
    model = build_mae(_mae_config(encoder.config, settings), encoder.train())
    description = f"MAE, encoder of {cfg.model}, new decoder {_decoder_text(model.config)}"
    return model, processor_config, description


def _continue_mae(
    source: Path, cfg: TrainConfig, settings: PretrainConfig
) -> tuple[MAE, dict[str, Any] | None, str]:
    """An MAE directory with its decoder, continued as it is (masking and loss from ``settings``)."""
    model, processor_config = load_mae(source)
    config = model.config
    kept = {
        "decoder_depth": config.decoder_num_hidden_layers,
        "decoder_width": config.decoder_hidden_size,
        "image_size": config.encoder.image_hw[0],
    }
    asked = {"decoder_depth": settings.decoder_depth, "decoder_width": settings.decoder_width}
    asked["image_size"] = cfg.image_size
    clashes = [
        f"--{name.replace('_', '-')} {asked[name]} (it has {value})"
        for name, value in kept.items()
        if asked[name] not in (None, value)
    ]
    if clashes:
        raise TrainingError(
            f"--model {source} is an MAE with its decoder, continued as it is: "
            f"{', '.join(clashes)} cannot change it; leave those options out"
        )
    model.config = config.replace(
        mask_ratio=settings.mask_ratio, norm_pix_loss=settings.norm_pix_loss
    )
    description = f"MAE continued from {source}, decoder {_decoder_text(model.config)}"
    return model.train(), processor_config, description


def headless_encoder(model: torch.nn.Module, source: str) -> ViT:
    """A plain headless ViT with ``model``'s encoder weights (head and pooler dropped)."""
    if not isinstance(model, ViT) or model.num_prefix_tokens != 1:
        raise TrainingError(
            f"--model {source}: MAE pre-training starts from a plain ViT ([CLS] + patches); "
            f"this is a {type(model).__name__}"
        )
    config = MAEConfig.plain_encoder(model.config)
    with torch.device("meta"):
        encoder = ViT(config)
    state = {
        name: tensor
        for name, tensor in model.state_dict().items()
        if not name.startswith(("head.", "pooler."))
    }
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder.train()


def _mae_config(encoder: ViTConfig, settings: PretrainConfig) -> MAEConfig:
    width = settings.decoder_width or PAPER_DECODER_WIDTH
    try:
        return MAEConfig(
            encoder=encoder,
            decoder_num_hidden_layers=settings.decoder_depth or PAPER_DECODER_DEPTH,
            mask_ratio=settings.mask_ratio,
            norm_pix_loss=settings.norm_pix_loss,
            **decoder_defaults(width),
        )
    except ValueError as error:
        raise TrainingError(f"MAE settings: {error}") from None


def _decoder_text(config: MAEConfig) -> str:
    return (
        f"{config.decoder_num_hidden_layers} x {config.decoder_hidden_size}, mask "
        f"{config.mask_ratio:.0%}{', norm-pix loss' if config.norm_pix_loss else ''}"
    )
