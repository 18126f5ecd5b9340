"""MAE pre-training as a training task: unlabeled images in, a ViTMAEForPreTraining directory out.

The trainer's loop runs it unchanged (DDP, exact resume, warm-up + cosine, logs, best/ by
validation loss); this module brings what differs from classification:

- data: every image under ``--data`` (nested folders fine, folder names ignored), a seeded
  held-out share for validation (split.json), MAE's crops (random-resized, scale 0.2-1, bicubic,
  horizontal flip);
- the mask: each image's mask noise is drawn with its crop, under the sampler's per-sample seed,
  and travels as the batch's "targets"; so N processes mask exactly as one does, and a resumed
  run exactly as an uninterrupted one. Validation images get a noise fixed by their index: the
  validation loss of every epoch is measured on the same masks;
- the task: ``MAE(images, noise)`` -> ``{"loss"}`` (mean squared error on the hidden patches),
  optimised with AdamW betas (0.9, 0.95) (``adam_betas``);
- the files: best/ is a ``ViTMAEForPreTraining`` directory (``vitkit.checkpoints.hf_mae``) and
  ``reconstructions/epoch_NNN.png`` shows original, masked and reconstructed validation images.

The encoder starts from random weights (``--preset``) or from any ViT checkpoint vitkit loads
(its head and pooler dropped); an MAE directory with its decoder continues as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from vitkit.atomic_files import atomic_write_text
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
from vitkit.errors import DatasetError, TrainingError
from vitkit.images.processor import ImageProcessor
from vitkit.models.config import ViTConfig
from vitkit.models.mae import MAE, MAEConfig, build_mae, decoder_defaults
from vitkit.models.vit import ViT
from vitkit.training import data as vdata
from vitkit.training.callbacks import Callback
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.evaluate import EvalResult, ProcessorTransform
from vitkit.training.mae_pictures import reconstruction_grid, save_png
from vitkit.training.specs import ModelSpec, preset_config
from vitkit.training.state import FitState
from vitkit.training.tasks.base import TaskBuilder, TrainingTask
from vitkit.training.tasks.mae_config import (
    MAE_BETAS,
    PAPER_DECODER_DEPTH,
    PAPER_DECODER_WIDTH,
    PretrainConfig,
    pretrain_recipe,
)
from vitkit.training.trainer import TrainResult, train

PSEUDO_CLASS = "image"  # unlabeled images: one pseudo-class, never used as a label


def pretrain(
    cfg: TrainConfig, settings: PretrainConfig, callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """Pre-train an MAE on every image under ``cfg.data`` (see the module docstring); the
    trainer's loop, with MAE's optimisation filled into ``cfg`` where it left values unset."""
    pictures = ReconstructionPictures(settings.pictures)
    return train(
        pretrain_recipe(cfg, settings), MAEBuilder(settings), callbacks=[*callbacks, pictures]
    )


# ---- data ---------------------------------------------------------------------------------------
def list_images(root: Path) -> list[vdata.Sample]:
    """Every image file under ``root`` (recursively; hidden files and folders skipped), sorted."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected a folder of images, nested or not)")
    samples = [
        vdata.Sample(str(path), 0)
        for path in sorted(root.rglob("*"))
        if path.suffix.lower() in vdata.IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    if len(samples) < 2:
        raise DatasetError(
            f"{root}: {len(samples)} image(s) found; pre-training needs at least 2 (one is held "
            f"out for validation); extensions read: {', '.join(sorted(vdata.IMAGE_SUFFIXES))}"
        )
    return samples


def unlabeled_splits(
    root: Path, out: Path | None, val_fraction: float, max_val: int, seed: int
) -> vdata.DataSplits:
    """Train/val split of every image under ``root``: ``val_fraction`` of them, at most
    ``max_val``, at least one; re-read from ``out/split.json`` when it exists."""
    split_file = out / "split.json" if out is not None else None
    if split_file is not None and split_file.exists():
        return vdata.read_split(split_file, root)
    samples = list_images(root)
    count = min(max(1, round(val_fraction * len(samples))), max_val, len(samples) - 1)
    order = np.random.default_rng(seed).permutation(len(samples))
    val = sorted(order[:count].tolist())
    train = sorted(order[count:].tolist())
    splits = vdata.DataSplits(
        [PSEUDO_CLASS],
        [samples[i] for i in train],
        [samples[i] for i in val],
        source="split.json",
    )
    if split_file is not None:
        vdata.write_split(split_file, root, splits, val_fraction, seed)
    return splits


def mae_train_transform(
    size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...], min_scale: float
) -> v2.Compose:
    """MAE's augmentation: RandomResizedCrop(scale=(min_scale, 1), bicubic) + horizontal flip."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RGB(),
            v2.RandomResizedCrop(
                size,
                scale=(min_scale, 1.0),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class MaskedImages(vdata.ImageDataset):
    """Images with the mask noise (num_patches,) of each as the target; labels are ignored.

    Under a sampler seed the crop and the noise are drawn from it (reproducible whatever the
    processes and workers); without one (evaluation) the noise is fixed by the image's index.
    """

    def __init__(
        self,
        samples: Sequence[vdata.Sample],
        transform: Any,
        images: Sequence[np.ndarray] | None,
        num_patches: int,
    ) -> None:
        super().__init__(samples, transform, images)
        self.num_patches = num_patches

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.image(index)
        if seed is None:
            noise = torch.rand(self.num_patches, generator=torch.Generator().manual_seed(index))
            return self.transform(image), noise
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            pixels = self.transform(image)
            return pixels, torch.rand(self.num_patches)


# ---- the model ----------------------------------------------------------------------------------
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


# ---- the task -----------------------------------------------------------------------------------
class ReconstructionEvaluator:
    """Judges an MAE by its reconstruction loss on the hidden patches (per image: all images
    hide the same number of patches, so the mean over images is the loss over patches)."""

    def batch(
        self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        assert isinstance(model, MAE)
        output = model(images, noise=targets)
        target = model.target_patches(images)
        per_patch = ((output.logits.float() - target) ** 2).mean(-1)
        return {"loss": (per_patch * output.mask).sum(1) / output.mask.sum(1)}

    def report(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        return {"reconstruction_loss": float(outputs["loss"].mean()), "num_samples": len(targets)}

    def scalars(self, report: dict[str, Any]) -> dict[str, float]:
        return {}  # the loop logs val_loss, which is the reconstruction loss

    def write(self, result: EvalResult, directory: Path, title: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        report = {**result.report, "title": title}
        atomic_write_text(directory / "metrics.json", json.dumps(report, indent=2) + "\n")


class MAETask(TrainingTask):
    """MAE pre-training: the batch's targets are the mask noise; returns ``{"loss"}``."""

    adam_betas = MAE_BETAS

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.evaluator = ReconstructionEvaluator()

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.network(images, noise=targets).loss}


class MAEBuilder(TaskBuilder):
    """Unlabeled images under ``cfg.data`` -> an ``MAETask``."""

    def __init__(self, settings: PretrainConfig) -> None:
        self.settings = settings

    def read_splits(self, cfg: TrainConfig, out: Path | None) -> vdata.DataSplits:
        return unlabeled_splits(
            Path(cfg.data), out, cfg.val_fraction, self.settings.max_val_images, cfg.seed
        )

    def check_splits(self, cfg: TrainConfig, splits: vdata.DataSplits) -> None:
        if cfg.batch_size > len(splits.train):
            raise TrainingError(
                f"--batch-size {cfg.batch_size} is larger than the {len(splits.train)} training "
                f"images under {cfg.data}: use --batch-size {len(splits.train)} or less"
            )

    def describe_data(self, data: vdata.RunData) -> str:
        return (
            f"data: {len(data.train)} unlabeled images to pre-train on, {len(data.val)} held "
            f"out for the validation reconstruction loss and pictures; MAE crops (scale "
            f"{self.settings.min_crop_scale:g}-1, bicubic) and horizontal flips"
        )

    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> MAETask:
        return MAETask(mae_model_spec(cfg, self.settings))

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        """The trainer's scan (bad images reported once, decoded images cached), then MAE's
        crops and masks on the training images and fixed masks on the validation images."""
        scanned = super().prepare_data(cfg, out, task, splits, info)
        spec = task.spec
        assert isinstance(task.model, MAE)
        patches = task.model.config.encoder.num_patches
        crops = mae_train_transform(
            spec.image_size, spec.mean, spec.std, self.settings.min_crop_scale
        )
        if info.is_main:
            atomic_write_text(
                out / "pretrain_config.json", json.dumps(self.settings.to_dict(), indent=2) + "\n"
            )
        return vdata.RunData(
            splits=scanned.splits,
            train=MaskedImages(scanned.train.samples, crops, scanned.train.images, patches),
            val=MaskedImages(scanned.val.samples, spec.eval_transform, scanned.val.images, patches),
            test=None,
            train_indices=list(range(len(scanned.train))),
            balance="none",
            class_weight=None,
            bad=scanned.bad,
        )


# ---- reconstruction pictures ----------------------------------------------------------------
class ReconstructionPictures(Callback):
    """After every epoch, ``OUT/reconstructions/epoch_NNN.png`` of the first ``count``
    validation images (always the same images and masks), on rank 0."""

    def __init__(self, count: int) -> None:
        self.count = count

    def on_epoch_end(
        self, run: Any, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        if self.count <= 0 or not run.info.is_main:
            return
        model, dataset, spec = run.task.model, run.data.val, run.task.spec
        assert isinstance(model, MAE)
        items = [dataset[index] for index in range(min(self.count, len(dataset)))]
        pixels = torch.stack([pixels for pixels, _ in items]).to(run.info.device)
        noise = torch.stack([noise for _, noise in items]).to(run.info.device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            output = model(pixels, noise=noise)
            reconstructed = model.reconstruct(pixels, output.logits.float())
        model.train(was_training)
        picture = reconstruction_grid(
            pixels, reconstructed, output.mask, model.config.encoder.patch_size, spec.mean, spec.std
        )
        folder = run.out / "reconstructions"
        folder.mkdir(exist_ok=True)
        save_png(picture, folder / f"epoch_{record['epoch']:03d}.png")
