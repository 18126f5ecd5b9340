"""Fine-tune (or train from scratch) an image classifier on an image folder; one process or many.

Read it top to bottom: configuration, the pluggable pieces (model factory, loss, saver), the
optimiser and schedule, checkpoint state, evaluation, and finally ``train()``, the loop itself.

The recipe is the ViT paper's fine-tuning one (Appendix B.1.1): SGD with momentum 0.9, no weight
decay, linear warm-up then cosine decay, gradients clipped at global norm 1.0, a new
zero-initialised linear head. AdamW is there for training from scratch. Every epoch ends with a
validation pass (loss, accuracy, macro-F1; the loss is plain cross-entropy, without label
smoothing or class weights, so runs with different training losses compare); the epoch with the
lowest validation loss is saved as
``best/`` (an HF directory for a ViT) and the whole training state as ``last.pt``, both written
atomically, so ``--resume`` after a crash or SIGKILL continues exactly where the last finished
epoch left off and reaches the same weights as a run that was never interrupted.

Run folder::

    OUT/train_config.json   the settings of the run
    OUT/split.json          the validation split (when drawn from the training folder)
    OUT/bad_images.txt      unreadable images that were skipped, if any
    OUT/metrics.jsonl       one record per logged step and per epoch; metrics.csv: per epoch
    OUT/curves.png          loss and accuracy curves
    OUT/best/               best epoch by validation loss, in the model's own format
    OUT/last.pt             model + optimiser + scheduler + RNG + sampler state of the last epoch
    OUT/test/               metrics.json, confusion_matrix.{json,png} of best/ on the test split

Pluggable for other models and losses (a CNN baseline, a distilled student): ``train`` takes a
``model_factory`` returning a ``ModelSpec`` (the module, its input size and normalisation, how
to preprocess for evaluation, how to save and reload it) and a ``loss_fn(outputs, targets,
images)``. Any ``nn.Module`` whose forward returns logits, or an object with ``.logits``, works.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from vitkit.atomic_files import (
    atomic_torch_save,
    atomic_write_text,
    recover_directories,
    write_directory_atomically,
)
from vitkit.errors import VitkitError
from vitkit.training import data as vdata
from vitkit.training.augment import build_train_transform, check_mix, mix_batch
from vitkit.training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    init_distributed,
)
from vitkit.training.metrics import classification_report


class TrainingError(VitkitError):
    """Training cannot start or cannot go on (bad settings, diverged loss, foreign run folder)."""


# ---- configuration ------------------------------------------------------------------------
@dataclass
class TrainConfig:
    data: str
    out: str
    # model: a checkpoint (anything vitkit.load takes) or a preset trained from scratch
    model: str | None = None
    from_scratch: bool = False
    preset: str = "vit-tiny-patch16-224"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ViTConfig fields, scratch only
    image_size: int | None = None
    freeze_backbone: bool = False
    # optimisation
    epochs: int = 10
    batch_size: int = 64  # global: images per optimiser step, over all processes and micro-batches
    grad_accum: int = 1
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.01 for SGD, 1e-3 for AdamW
    weight_decay: float | None = None  # None: 0 for SGD (the paper), 0.05 for AdamW
    momentum: float = 0.9
    warmup_fraction: float = 0.05
    warmup_steps: int | None = None  # overrides warmup_fraction
    clip_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    # data
    balance: str = "auto"
    augment: str = "natural"
    # Batch mixing after augmentation (vitkit.training.augment.mix_batch): "none", "mixup" or "cutmix";
    # the loss then sees soft targets (N, classes) and, under distillation, the mixed images.
    mix: str = "none"
    mix_alpha: float = 1.0
    val_fraction: float = 0.1
    on_bad_image: str = "skip"
    cache_images: str = "auto"  # "auto" | "yes" | "no": keep decoded images in memory
    workers: int | None = None  # None: 0 with the cache, else min(8, CPUs)
    eval_batch_size: int | None = None
    # run
    seed: int = 0
    device: str | None = None  # None: CUDA when available
    resume: bool = False
    log_every: int = 10
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- the pluggable pieces -----------------------------------------------------------------
@dataclass
class ModelSpec:
    """What the trainer needs to know about a model besides its parameters."""

    model: nn.Module
    image_size: tuple[int, int]  # training resolution (height, width)
    mean: tuple[float, ...]  # the normalisation the model expects (training augmentations use it)
    std: tuple[float, ...]
    eval_transform: Callable[[Image.Image], torch.Tensor]  # the checkpoint's own preprocessing
    save: Callable[[nn.Module, Path], None]  # writes a directory vitkit can load again
    load: Callable[[Path], nn.Module] | None = None  # reads what ``save`` wrote (for the test pass)
    description: str = ""


ModelFactory = Callable[[TrainConfig, dict[int, str]], ModelSpec]
LossFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
BestFilter = Callable[[dict[str, Any]], str | None]  # val report -> reason it may not be best


def logits_of(outputs: Any) -> torch.Tensor:
    """Logits from a model's output: a tensor, or an object with ``.logits`` (ViTOutput, HF)."""
    return outputs.logits if hasattr(outputs, "logits") else outputs


def cross_entropy_loss(label_smoothing: float = 0.0, weight: torch.Tensor | None = None) -> LossFn:
    """The default loss: cross-entropy on the logits, optionally smoothed and class-weighted."""

    def loss_fn(outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        logits = logits_of(outputs).float()
        class_weight = weight.to(logits.device) if weight is not None else None
        return F.cross_entropy(
            logits, targets, weight=class_weight, label_smoothing=label_smoothing
        )

    return loss_fn


class ProcessorTransform:
    """One image through an ``ImageProcessor`` -> (3, H, W); picklable for loader workers."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(image)[0]


def vit_model_spec(cfg: TrainConfig, id2label: dict[int, str]) -> ModelSpec:
    """A ViT from a checkpoint (or a preset, from scratch) with a new zero-initialised head."""
    from vitkit.checkpoints import load_model, save_pretrained
    from vitkit.images.processor import ImageProcessor
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    if cfg.from_scratch:
        overrides = dict(cfg.model_overrides)
        if cfg.image_size is not None:
            overrides["image_size"] = cfg.image_size
        try:
            config = preset(cfg.preset, **overrides)
        except (TypeError, ValueError) as error:
            raise TrainingError(
                f"--preset {cfg.preset} with --model-arg {overrides}: {error} "
                "(--model-arg takes ViTConfig fields such as hidden_size=64, num_hidden_layers=4)"
            ) from error
        model = ViT(config)
        processor = ImageProcessor.for_config(model.config)
        description = f"{cfg.preset} from scratch"
    else:
        if cfg.model is None:
            raise TrainingError(
                "name a checkpoint with --model, or pass --from-scratch --preset NAME"
            )
        from vitkit.inference.classifier import load as load_classifier

        classifier = load_classifier(cfg.model, image_size=cfg.image_size, device="cpu")
        model, processor = classifier.model, classifier.processor
        description = f"{cfg.model} fine-tuned"
    model.reset_head(id2label)
    if cfg.freeze_backbone:  # linear probe: only the new head learns
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("head."))
    processor_config = processor.to_dict()

    def save(trained: nn.Module, directory: Path) -> None:
        save_pretrained(trained, directory, processor_config=processor_config)

    def reload(directory: Path) -> nn.Module:
        return load_model(directory).model

    return ModelSpec(
        model=model,
        image_size=model.config.image_hw,
        mean=tuple(processor_config.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(processor_config.get("image_std", (0.5, 0.5, 0.5))),
        eval_transform=ProcessorTransform(processor),
        save=save,
        load=reload,
        description=description,
    )


# ---- optimiser and schedule ---------------------------------------------------------------
NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, no decay by default) or AdamW (decay on weight matrices only)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        lr = cfg.lr if cfg.lr is not None else 0.01
        decay = cfg.weight_decay if cfg.weight_decay is not None else 0.0
        return torch.optim.SGD(
            [p for _, p in trainable], lr=lr, momentum=cfg.momentum, weight_decay=decay
        )
    if cfg.optimizer == "adamw":
        lr = cfg.lr if cfg.lr is not None else 1e-3
        decay = cfg.weight_decay if cfg.weight_decay is not None else 0.05
        # Norms, biases, position embeddings and class tokens are not decayed (timm, DeiT).
        no_decay = [p for n, p in trainable if p.ndim <= 1 or n.split(".")[-1] in NO_DECAY_NAMES]
        ids = {id(p) for p in no_decay}
        groups = [
            {"params": [p for _, p in trainable if id(p) not in ids], "weight_decay": decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr)
    raise TrainingError(f"unknown optimizer {cfg.optimizer!r}: choose sgd or adamw")


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear from 1/warmup up to 1, then cosine down to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---- checkpoint state (RNG) -------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- metrics log ------------------------------------------------------------------------------
EPOCH_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "val_macro_precision",
    "val_macro_recall",
    "best",
    "seconds",
)


def write_logs(out: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl (every record) and metrics.csv (epoch records) from the history.

    Rewriting rather than appending keeps the files equal to an uninterrupted run's after a
    resume (the steps a killed epoch had logged are not repeated).
    """
    lines = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write_text(out / "metrics.jsonl", lines)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=EPOCH_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(r for r in records if r["type"] == "epoch")
    atomic_write_text(out / "metrics.csv", table.getvalue())


# ---- evaluation ---------------------------------------------------------------------------
@dataclass
class EvalResult:
    loss: float
    report: dict[str, Any]
    targets: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray  # (N, classes) softmax
    indices: np.ndarray  # dataset index of each row
    paths: list[str]  # image file of each row


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: vdata.ImageDataset,
    labels: list[str],
    *,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    dist_info: DistInfo | None = None,
) -> EvalResult:
    """Cross-entropy, predictions and the classification report of ``model`` on ``dataset``.

    Under DDP every process evaluates its share (positions rank, rank+W, ...) and the results are
    gathered, so every process returns the same full result.
    """
    dist_info = dist_info or DistInfo(device=device)
    sampler = vdata.EpochSampler(
        range(len(dataset)),
        shuffle=False,
        num_replicas=dist_info.world_size,
        rank=dist_info.rank,
    )
    loader = DataLoader(
        _IndexedDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers
    )
    was_training = model.training
    model.eval()
    parts: list[tuple[np.ndarray, ...]] = []
    with _autocast(device):
        for pixels, targets, indices in loader:
            logits = logits_of(model(pixels.to(device, non_blocking=True))).float()
            targets = targets.to(device)
            losses = F.cross_entropy(logits, targets, reduction="none")
            parts.append(
                (
                    indices.numpy(),
                    targets.cpu().numpy(),
                    logits.softmax(-1).cpu().numpy(),
                    losses.cpu().numpy(),
                )
            )
    model.train(was_training)
    gathered = [p for rank_parts in all_gather_objects(parts, dist_info) for p in rank_parts]
    if not gathered:
        raise TrainingError("evaluation set is empty")
    indices, targets_np, probabilities, losses_np = (
        np.concatenate(c) for c in zip(*gathered, strict=True)
    )
    order = np.argsort(indices, kind="stable")
    probabilities = probabilities[order]
    predictions = probabilities.argmax(-1)
    report = classification_report(targets_np[order], predictions, labels)
    indices = indices[order]
    return EvalResult(
        loss=float(losses_np.mean()),
        report=report,
        targets=targets_np[order],
        predictions=predictions,
        probabilities=probabilities,
        indices=indices,
        paths=[dataset.samples[i].path for i in indices.tolist()],
    )


class _IndexedDataset(torch.utils.data.Dataset):
    """Adds the dataset index to each item so gathered results can be put back in order."""

    def __init__(self, dataset: vdata.ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index = item[0] if isinstance(item, tuple) else item
        pixels, label = self.dataset[index]
        return pixels, label, index


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA; plain fp32 on CPU (bf16 matmuls are far slower on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def save_eval_outputs(result: EvalResult, labels: list[str], out: Path, title: str) -> None:
    """metrics.json, confusion_matrix.json and confusion_matrix.png of one evaluation."""
    from vitkit.training.plots import plot_confusion_matrix

    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in result.report.items() if k != "confusion_matrix"}
    metrics["loss"] = result.loss
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    matrix = {
        "labels": labels,
        "matrix": result.report["confusion_matrix"],
        "rows": "true",
        "columns": "predicted",
    }
    atomic_write_text(out / "confusion_matrix.json", json.dumps(matrix, indent=1) + "\n")
    plot_confusion_matrix(
        result.report["confusion_matrix"], labels, out / "confusion_matrix.png", title
    )


# ---- the data of a run --------------------------------------------------------------------------
@dataclass
class RunData:
    splits: vdata.DataSplits
    train: vdata.ImageDataset
    val: vdata.ImageDataset
    test: vdata.ImageDataset | None
    train_indices: list[int]  # after balancing
    balance: str
    class_weight: torch.Tensor | None
    bad: list[tuple[str, str]]


def prepare_data(
    cfg: TrainConfig, out: Path, spec: ModelSpec, splits: vdata.DataSplits, info: DistInfo
) -> RunData:
    """Scan every image once (report unreadable ones), balance the training set, build datasets."""
    threads = min(8, os.cpu_count() or 1)
    all_samples = splits.train + splits.val + splits.test
    keep = cfg.cache_images == "yes" or (cfg.cache_images == "auto" and len(all_samples) <= 20000)
    scans = [
        vdata.scan_images(s, keep=keep, threads=threads)
        for s in (splits.train, splits.val, splits.test)
    ]
    bad = [item for scan in scans for item in scan.bad]
    if bad:
        report = vdata.ScanResult([], bad, None).report()
        if cfg.on_bad_image == "fail":
            raise vdata.DatasetError(report + "\n(pass --on-bad-image skip to train without them)")
        if info.is_main:
            (out / "bad_images.txt").write_text(report + "\n")
            print(f"warning: skipping {report}", file=sys.stderr)
    train_scan, val_scan, test_scan = scans
    if not val_scan.good:
        raise vdata.DatasetError(f"{cfg.data}: the validation split has no readable images")
    labels = [s.label for s in train_scan.good]
    num_classes = len(splits.classes)
    balance = vdata.resolve_balance(cfg.balance, labels, num_classes)
    indices = (
        vdata.oversample_indices(labels, cfg.seed)
        if balance == "oversample"
        else list(range(len(labels)))
    )
    weight = (
        vdata.inverse_frequency_weights(labels, num_classes) if balance == "weighted-loss" else None
    )
    train_transform = build_train_transform(cfg.augment, spec.image_size, spec.mean, spec.std)
    try:  # say so now, not at the first step
        check_mix(cfg.mix, cfg.mix_alpha)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    return RunData(
        splits=splits,
        train=vdata.ImageDataset(train_scan.good, train_transform, train_scan.images),
        val=vdata.ImageDataset(val_scan.good, spec.eval_transform, val_scan.images),
        test=vdata.ImageDataset(test_scan.good, spec.eval_transform, test_scan.images)
        if test_scan.good
        else None,
        train_indices=indices,
        balance=balance,
        class_weight=weight,
        bad=bad,
    )


# ---- the loop ---------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    best_epoch: int | None
    best_val_loss: float
    history: list[dict[str, Any]]  # every metrics record (steps and epochs)
    test: EvalResult | None
    labels: list[str]


def train(
    cfg: TrainConfig,
    *,
    model_factory: ModelFactory = vit_model_spec,
    loss_fn: LossFn | None = None,
    best_filter: BestFilter | None = None,
) -> TrainResult:
    """Train as ``cfg`` says; under torchrun, as one process of a DDP group.

    ``loss_fn(outputs, targets, images)`` replaces the default cross-entropy (label smoothing and
    class weights are then the caller's business). ``best_filter(val_report)`` may veto an epoch
    as the best model by returning the reason (e.g. a collapsed distillation run).
    """
    # The process group (under torchrun) outlives this call, so that several runs can share it
    # (e.g. the rows of `vitkit compare`); the command that started it calls
    # vitkit.training.distributed.cleanup_distributed() before exiting.
    info = init_distributed(cfg.device)
    return _train(cfg, info, model_factory, loss_fn, best_filter)


def _train(
    cfg: TrainConfig,
    info: DistInfo,
    model_factory: ModelFactory,
    loss_fn: LossFn | None,
    best_filter: BestFilter | None,
) -> TrainResult:
    out = Path(cfg.out)
    last_path = out / "last.pt"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        recover_directories(out)
        if last_path.exists() and not cfg.resume:
            raise TrainingError(
                f"{out} holds a previous run (last.pt): pass --resume to continue it, or choose another --out"
            )
    barrier(info)

    # 1. Data splits (rank 0 draws and writes split.json, the others read it) and the model.
    if info.is_main:
        splits = vdata.prepare_splits(cfg.data, out, cfg.val_fraction, cfg.seed)
    barrier(info)
    if not info.is_main:
        splits = vdata.prepare_splits(cfg.data, out, cfg.val_fraction, cfg.seed)
    labels = splits.classes
    seed_everything(cfg.seed)  # same seed on every rank: identical initial weights
    spec = model_factory(cfg, splits.id2label)
    run = prepare_data(cfg, out, spec, splits, info)
    model = spec.model.to(info.device)

    # 2. Batch arithmetic: the global batch is split over processes and accumulation steps.
    micro_batch, remainder = divmod(cfg.batch_size, info.world_size * cfg.grad_accum)
    if remainder or micro_batch == 0:
        raise TrainingError(
            f"--batch-size {cfg.batch_size} must be a multiple of processes x --grad-accum "
            f"({info.world_size} x {cfg.grad_accum})"
        )
    steps_per_epoch = len(run.train_indices) // cfg.batch_size
    if steps_per_epoch == 0:
        raise TrainingError(
            f"--batch-size {cfg.batch_size} is larger than the training set "
            f"({len(run.train_indices)} images after balancing)"
        )
    total_steps = cfg.epochs * steps_per_epoch
    warmup = (
        cfg.warmup_steps
        if cfg.warmup_steps is not None
        else round(cfg.warmup_fraction * total_steps)
    )
    workers = (
        cfg.workers
        if cfg.workers is not None
        else (0 if run.train.images is not None else min(8, os.cpu_count() or 1))
    )
    sampler = vdata.EpochSampler(
        run.train_indices,
        shuffle=True,
        seed=cfg.seed,
        num_replicas=info.world_size,
        rank=info.rank,
        global_batch=cfg.batch_size,
        drop_last=True,
    )

    # 3. Optimiser, schedule, loss; DDP wrapping.
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, max(1, warmup))
    )
    if loss_fn is None:
        loss_fn = cross_entropy_loss(cfg.label_smoothing, run.class_weight)
    history: list[dict[str, Any]] = []
    best_val_loss, best_epoch, start_epoch = math.inf, None, 0
    if cfg.resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        history, best_val_loss, best_epoch = (
            state["history"],
            state["best_val_loss"],
            state["best_epoch"],
        )
        start_epoch = state["epoch"]
        set_rng_state(state["rng"])
        if info.is_main:
            print(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}", file=sys.stderr)
            changed = _changed_settings(state["config"], cfg.to_dict())
            if changed:
                print(
                    f"warning: settings differ from the interrupted run ({', '.join(changed)}); "
                    "the result will not equal an uninterrupted run",
                    file=sys.stderr,
                )
    elif cfg.resume and info.is_main:
        print(
            f"--resume: {last_path} does not exist yet, starting from the beginning",
            file=sys.stderr,
        )
    ddp_model: nn.Module = model
    if info.enabled:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if info.is_main:
        atomic_write_text(out / "train_config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        _print_plan(cfg, spec, run, info, steps_per_epoch, micro_batch, model)

    # 4. Epochs.
    progress = _Progress(enabled=cfg.progress and info.is_main)
    trainable = [p for p in model.parameters() if p.requires_grad]
    step = start_epoch * steps_per_epoch
    # Workers persist across epochs; the sampler runs in this process, so set_epoch still applies.
    loader = DataLoader(
        run.train,
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=info.device.type == "cuda",
    )
    with progress:
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            ddp_model.train()
            batches = iter(loader)
            task = progress.add_epoch(epoch + 1, cfg.epochs, steps_per_epoch)
            epoch_loss = 0.0
            for _ in range(steps_per_epoch):
                loss_value = _train_step(
                    ddp_model, batches, loss_fn, optimizer, cfg, info, trainable, len(labels)
                )
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"the loss became {loss_value} at step {step + 1} (epoch {epoch + 1}); "
                        f"training stopped. Lower --lr (now {optimizer.param_groups[0]['lr']:.3g}), "
                        "raise --warmup-steps, or check the data for broken images"
                    )
                scheduler.step()
                step += 1
                epoch_loss += loss_value
                progress.advance(task, loss_value, float(scheduler.get_last_lr()[0]))
                if step % cfg.log_every == 0:
                    history.append(
                        {
                            "type": "step",
                            "epoch": epoch + 1,
                            "step": step,
                            "loss": loss_value,
                            "lr": float(scheduler.get_last_lr()[0]),
                        }
                    )

            # 5. Validation, best model, last checkpoint (in that order: last.pt is the commit).
            val = evaluate(
                model,
                run.val,
                labels,
                device=info.device,
                batch_size=cfg.eval_batch_size or micro_batch * 2,
                workers=workers,
                dist_info=info,
            )
            veto = best_filter(val.report) if best_filter else None
            is_best = val.loss < best_val_loss and veto is None
            record = {
                "type": "epoch",
                "epoch": epoch + 1,
                "step": step,
                "lr": float(scheduler.get_last_lr()[0]),
                "train_loss": epoch_loss / steps_per_epoch,
                "val_loss": val.loss,
                "val_accuracy": val.report["accuracy"],
                "val_macro_f1": val.report["macro_f1"],
                "val_macro_precision": val.report["macro_precision"],
                "val_macro_recall": val.report["macro_recall"],
                "best": is_best,
                "seconds": round(time.perf_counter() - started, 3),
            }
            if veto is not None:
                record["not_best_because"] = veto
            history.append(record)
            if is_best:
                best_val_loss, best_epoch = val.loss, epoch + 1
            if info.is_main:
                if is_best:
                    write_directory_atomically(out / "best", lambda d: spec.save(model, d))
                atomic_torch_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "sampler": sampler.state_dict(),
                        "rng": rng_state(),
                        "epoch": epoch + 1,
                        "history": history,
                        "best_val_loss": best_val_loss,
                        "best_epoch": best_epoch,
                        "config": cfg.to_dict(),
                    },
                    last_path,
                )
                write_logs(out, history)
                from vitkit.training.plots import plot_curves

                plot_curves([r for r in history if r["type"] == "epoch"], out / "curves.png")
                progress.epoch_summary(record, veto)
            barrier(info)

    # 6. The test split, evaluated with the best model as saved (its own preprocessing).
    test_result = None
    if run.test is not None and best_epoch is not None and info.is_main:
        best_model = spec.load(out / "best") if spec.load is not None else model
        best_model.to(info.device)
        test_result = evaluate(
            best_model,
            run.test,
            labels,
            device=info.device,
            batch_size=cfg.eval_batch_size or 64,
            workers=workers,
        )
        save_eval_outputs(test_result, labels, out / "test", f"test split, best epoch {best_epoch}")
    barrier(info)
    return TrainResult(out, best_epoch, best_val_loss, history, test_result, labels)


# Settings that may change on --resume without changing the result.
_RUNTIME_SETTINGS = {
    "resume",
    "progress",
    "workers",
    "log_every",
    "cache_images",
    "device",
    "eval_batch_size",
}


def _changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return sorted(
        key for key in current if key not in _RUNTIME_SETTINGS and saved.get(key) != current[key]
    )


def _train_step(
    model: nn.Module,
    batches: Any,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    info: DistInfo,
    trainable: list[nn.Parameter],
    num_classes: int,
) -> float:
    """One optimiser step over ``grad_accum`` micro-batches; returns the global mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=info.device)
    for micro in range(cfg.grad_accum):
        images, targets = next(batches)
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        if cfg.mix != "none":
            images, targets = mix_batch(images, targets, num_classes, cfg.mix, cfg.mix_alpha)
        # DDP all-reduces gradients only on the last micro-batch of the step.
        sync = micro == cfg.grad_accum - 1 or not info.enabled
        with nullcontext() if sync else model.no_sync(), _autocast(info.device):  # type: ignore[operator]
            loss = loss_fn(model(images), targets, images) / cfg.grad_accum
        loss.backward()
        total += loss.detach().float()
    mean_loss = all_reduce_mean(total, info).item()
    if math.isfinite(mean_loss) and cfg.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
    if math.isfinite(mean_loss):
        optimizer.step()
    return mean_loss


def _print_plan(
    cfg: TrainConfig,
    spec: ModelSpec,
    run: RunData,
    info: DistInfo,
    steps_per_epoch: int,
    micro_batch: int,
    model: nn.Module,
) -> None:
    counts = vdata.class_counts([s.label for s in run.train.samples], len(run.splits.classes))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lines = [
        f"model: {spec.description} ({total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable), "
        f"input {spec.image_size[0]}x{spec.image_size[1]}, device {info.device} x {info.world_size} process(es)",
        f"data: {len(run.train)} train / {len(run.val)} val / {len(run.test) if run.test else 0} test images, "
        f"{len(run.splits.classes)} classes; train counts {dict(zip(run.splits.classes, counts.tolist(), strict=True))}",
        f"balance: {run.balance} ({len(run.train_indices)} samples per epoch); augment: {cfg.augment}"
        + (f"; mix: {cfg.mix} (alpha {cfg.mix_alpha:g})" if cfg.mix != "none" else ""),
        f"optimisation: {cfg.optimizer}, batch {cfg.batch_size} (= {info.world_size} x {cfg.grad_accum} x {micro_batch}), "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps",
    ]
    print("\n".join(lines), file=sys.stderr)


class _Progress:
    """rich progress bars on stderr (rank 0 only); silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.console = Console(stderr=True)
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def add_epoch(self, epoch: int, epochs: int, steps: int) -> Any:
        if self.progress is None:
            return None
        return self.progress.add_task(
            f"epoch {epoch}/{epochs}", total=steps, loss=float("nan"), lr=0.0
        )

    def advance(self, task: Any, loss: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(task, advance=1, loss=loss, lr=lr)

    def epoch_summary(self, record: dict[str, Any], veto: str | None) -> None:
        if self.progress is None:
            return
        for task in list(self.progress.task_ids):
            self.progress.remove_task(task)
        mark = " *best*" if record["best"] else (f" (not best: {veto})" if veto else "")
        self.console.print(
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}  val loss {record['val_loss']:.4f}  "
            f"val acc {record['val_accuracy']:.4f}  val macro-F1 {record['val_macro_f1']:.4f}  "
            f"({record['seconds']:.1f}s){mark}"
        )
