"""Train a task on an image folder, in one process or many: four phases and a fit loop.

Read it top to bottom, as nanoGPT's train.py:

    train(cfg)
      prepare_run    settings checked, run folder claimed, splits read, task built, data scanned,
                     loader, optimiser and schedule made
      restore_state  last.pt loaded on --resume (weights, optimiser, sampler, every RNG)
      fit            epochs of optimiser steps; each epoch judged on the validation split and
                     committed to last.pt
      finish         the saved best model evaluated on the test split

What is learned is the TASK's business (``vitkit.training.task``; the tasks in
``vitkit.training.tasks``): an ``nn.Module`` that owns the model (and a teacher, ...) and
returns ``{"loss", ...}`` for a batch; the loop reads only ``"loss"``. What
happens around the loop (progress, logs, curves, the best model, vetoes) are callbacks
(``vitkit.training.callbacks``). The optimisation is the recipe of ``vitkit.training.config``:
SGD + momentum (the ViT paper's fine-tuning) or AdamW (from scratch), linear warm-up then cosine
decay, gradients clipped at global norm 1.0. ``--batch-size`` is global: split over processes and
``--grad-accum`` micro-batches, so the same settings train the same model on 1 or N processes.

Run folder::

    OUT/train_config.json   the settings of the run (recipe filled in)
    OUT/split.json          the validation split (when drawn from the training folder)
    OUT/bad_images.txt      unreadable images that were skipped, if any
    OUT/metrics.jsonl       one record per logged step and per epoch; metrics.csv: per epoch
    OUT/curves.png          loss and validation curves
    OUT/best/               best epoch by validation loss, in the model's own format
    OUT/last.pt             the training state of the last epoch (vitkit.training.state)
    OUT/test/               the task's test outputs (metrics.json, confusion matrix) of best/
    OUT/best/README.md      its model card (vitkit.training.model_card), results included
    OUT/tensorboard/        with --report-to tensorboard; OUT/tracking.json: the MLflow run
                            (vitkit.training.tracking)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitkit.atomic_files import atomic_write_text, recover_directories
from vitkit.errors import TrainingError
from vitkit.training import data as vdata
from vitkit.training.callbacks import BestFilter, Callback, CallbackList, Veto, default_callbacks
from vitkit.training.checks import check_model, check_settings
from vitkit.training.config import (
    LR_DEFAULTS,
    WEIGHT_DECAY_DEFAULTS,
    TrainConfig,
    resolve_recipe,
)
from vitkit.training.distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from vitkit.training.evaluate import EvalResult, autocast, evaluate
from vitkit.training.model_spec import ModelFactory
from vitkit.training.run import Run
from vitkit.training.specs import vit_model_spec
from vitkit.training.state import (
    FitState,
    load_state,
    restore_fit_state,
    save_state,
    seed_everything,
    set_rng_state,
)
from vitkit.training.task_builder import TaskBuilder
from vitkit.training.tasks.classify import ClassificationBuilder, LossFn
from vitkit.training.tracking import reporters

__all__ = [
    "Run",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "build_optimizer",
    "train",
    "vit_model_spec",
    "warmup_cosine",
]


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
    task: TaskBuilder | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    model_factory: ModelFactory | None = None,
    loss_fn: LossFn | None = None,
    best_filter: BestFilter | None = None,
) -> TrainResult:
    """Train as ``cfg`` says; under torchrun, as one process of a DDP group.

    ``task`` builds what is learned (default: classification of class folders by a ViT; MAE
    pre-training: ``tasks.mae.MAEBuilder``; distillation: ``tasks.distill.DistillationBuilder``;
    multi-label: ``tasks.multilabel.MultiLabelBuilder``). Shorthands for a classification task:
    ``model_factory(cfg, id2label) -> ModelSpec`` (any network), ``loss_fn(outputs, targets,
    images)`` (its loss), ``best_filter(val_report)`` (a reason to veto an epoch as the best
    model, e.g. a collapse). ``callbacks`` run before the task's own and the built-in ones (so a
    judge can veto before the best model is chosen).
    """
    if task is not None and (model_factory is not None or loss_fn is not None):
        raise TypeError("give either a task or model_factory/loss_fn, not both")
    builder = task or ClassificationBuilder(model_factory or vit_model_spec, loss_fn)
    cfg = resolve_recipe(builder.resolve(cfg))
    check_settings(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    builder.check(cfg)
    # The process group (under torchrun) outlives this call, so that several runs can share it
    # (e.g. the rows of `vitkit compare`); the command that started it calls
    # vitkit.training.distributed.cleanup_distributed() before exiting.
    run = prepare_run(cfg, init_distributed(cfg.device), builder)
    fit_state = restore_state(run)
    judges = [Veto(best_filter)] if best_filter is not None else []
    builtin = default_callbacks(cfg.log_every, cfg.progress)
    own = builder.callbacks(cfg)  # the task's: pictures, vetoes
    everything = CallbackList([*callbacks, *own, *judges, *builtin, *reporters(cfg)])
    error: BaseException | None = None
    try:
        fit(run, fit_state, everything)
        return finish(run, fit_state, everything)
    except BaseException as caught:
        error = caught
        raise
    finally:
        everything.on_run_end(run, fit_state, error)


# ---- phase 1: prepare the run -------------------------------------------------------------
def prepare_run(cfg: TrainConfig, info: DistInfo, builder: TaskBuilder) -> Run:
    out = Path(cfg.out)
    claim_run_folder(out, cfg.resume, info)
    splits = _read_splits(builder, cfg, out, info)
    builder.check_splits(cfg, splits)
    seed_everything(cfg.seed)  # same seed on every rank: identical initial weights
    task = builder.build(cfg, splits)
    check_model(cfg, task.spec)
    data = builder.prepare_data(cfg, out, task, splits, info)
    task.to(info.device)
    micro_batch = cfg.batch_size // (info.world_size * cfg.grad_accum)
    steps_per_epoch = len(data.train_indices) // cfg.batch_size
    if steps_per_epoch == 0:  # check_splits said so already, unless bad images were dropped
        raise TrainingError(
            f"--batch-size {cfg.batch_size} is larger than the training set "
            f"({len(data.train_indices)} readable images after balancing)"
        )
    workers = cfg.workers
    if workers is None:
        workers = 0 if data.train.images is not None else min(8, os.cpu_count() or 1)
    sampler, loader = _train_loader(cfg, data, info, micro_batch, workers)
    optimizer = build_optimizer(task.model, cfg, betas=task.adam_betas, lr_scale=task.lr_scale)
    scheduler = _schedule(cfg, optimizer, cfg.epochs * steps_per_epoch)
    return Run(
        cfg,
        out,
        info,
        task,
        data,
        sampler,
        loader,
        optimizer,
        scheduler,
        steps_per_epoch,
        micro_batch,
        workers,
        builder.describe_data(cfg, data),
        builder.recipe_note(cfg),
    )


def _train_loader(
    cfg: TrainConfig, data: vdata.RunData, info: DistInfo, micro_batch: int, workers: int
) -> tuple[vdata.EpochSampler, DataLoader[Any]]:
    """This rank's share of each epoch's shuffled global order, in micro-batches."""
    sampler = vdata.EpochSampler(
        data.train_indices,
        shuffle=True,
        seed=cfg.seed,
        num_replicas=info.world_size,
        rank=info.rank,
        global_batch=cfg.batch_size,
        drop_last=True,
    )
    # Workers persist across epochs; the sampler runs in this process, so set_epoch still applies.
    loader = DataLoader(
        data.train,
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=info.device.type == "cuda",
    )
    return sampler, loader


def _schedule(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    assert cfg.warmup_fraction is not None, "resolve_recipe(cfg) first"
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = round(cfg.warmup_fraction * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, max(1, warmup)))


def claim_run_folder(out: Path, resume: bool, info: DistInfo) -> None:
    """Create OUT (rank 0), repair a write a kill interrupted, refuse someone else's run."""
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        recover_directories(out)
        if (out / "last.pt").exists() and not resume:
            raise TrainingError(
                f"{out} holds a previous run (last.pt): pass --resume to continue it, or choose another --out"
            )
    barrier(info)


def _read_splits(
    builder: TaskBuilder, cfg: TrainConfig, out: Path, info: DistInfo
) -> vdata.DataSplits:
    """Rank 0 draws the split and writes split.json; the others read it."""
    if info.is_main:
        splits = builder.read_splits(cfg, out)
    barrier(info)
    if not info.is_main:
        splits = builder.read_splits(cfg, out)
    return splits


NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")


def build_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    betas: tuple[float, float] = (0.9, 0.999),
    lr_scale: Callable[[str], float] | None = None,
) -> torch.optim.Optimizer:
    """SGD (momentum, no decay by default) or AdamW (decay on weight matrices only).

    ``lr_scale(name)``: a multiplier of the peak learning rate per parameter (layer-wise decay);
    parameters are grouped by it, and the schedule scales every group alike."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("the model has no trainable parameters")
    optimizer = cfg.optimizer or cfg.recipe.optimizer
    if optimizer not in LR_DEFAULTS:
        raise TrainingError(f"unknown optimizer {optimizer!r}: choose sgd or adamw")
    lr = cfg.lr if cfg.lr is not None else LR_DEFAULTS[optimizer]
    decay = cfg.weight_decay if cfg.weight_decay is not None else WEIGHT_DECAY_DEFAULTS[optimizer]
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in trainable:
        # Norms, biases, position embeddings and class tokens are not decayed (timm, DeiT).
        exempt = optimizer == "adamw" and (
            parameter.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES
        )
        scale = lr_scale(name) if lr_scale is not None else 1.0
        groups.setdefault((scale, 0.0 if exempt else decay), []).append(parameter)
    # decayed groups first, as before there were scales (a last.pt from then resumes)
    order = sorted(groups, key=lambda key: (-key[1], -key[0]))
    param_groups = [
        {"params": groups[key], "lr": lr * key[0], "weight_decay": key[1]} for key in order
    ]
    if optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, weight_decay=decay)
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear from 1/warmup up to 1, then cosine down to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---- phase 2: restore state ---------------------------------------------------------------
def restore_state(run: Run) -> FitState:
    """A fresh start, or the state of the last finished epoch (--resume); then DDP and the plan."""
    last = run.out / "last.pt"
    fit_state = FitState()
    if run.cfg.resume and last.exists():
        state = load_state(last)
        run.task.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        fit_state = restore_fit_state(state)
        if run.info.is_main:
            _say(f"resuming {run.out} after epoch {fit_state.epoch}/{run.cfg.epochs}")
            changed = _changed_settings(state["config"], run.cfg.to_dict())
            if changed:
                _say(
                    f"warning: settings differ from the interrupted run ({', '.join(changed)}); "
                    "the result will not equal an uninterrupted run"
                )
    elif run.cfg.resume and run.info.is_main:
        _say(f"--resume: {last} does not exist yet, starting from the beginning")
    run.task.distribute(run.info)
    if run.info.is_main:
        atomic_write_text(
            run.out / "train_config.json", json.dumps(run.cfg.to_dict(), indent=2) + "\n"
        )
        _say(plan(run))
    return fit_state


# Settings that may change on --resume without changing the result.
_RUNTIME_SETTINGS = {
    "resume",
    "progress",
    "workers",
    "log_every",
    "cache_images",
    "device",
    "eval_batch_size",
    "report_to",
    "experiment",
    "run_name",
    "parent_run",
}


def _changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return sorted(
        key for key in current if key not in _RUNTIME_SETTINGS and saved.get(key) != current[key]
    )


# ---- phase 3: fit -------------------------------------------------------------------------
def fit(run: Run, fit_state: FitState, callbacks: Callback) -> None:
    """Epochs of optimiser steps; each epoch judged on the validation split, then committed."""
    cfg, task, info = run.cfg, run.task, run.info
    callbacks.on_fit_start(run, fit_state)
    try:
        for epoch in range(fit_state.epoch, cfg.epochs):
            started = time.perf_counter()
            run.sampler.set_epoch(epoch)
            task.train()
            batches = iter(run.loader)
            callbacks.on_epoch_start(run, fit_state, epoch)
            losses = []
            for _ in range(run.steps_per_epoch):
                loss = train_step(run, batches)
                _stop_if_diverged(run, loss, fit_state.step + 1, epoch + 1)
                run.scheduler.step()
                fit_state.step += 1
                losses.append(loss)
                callbacks.on_step_end(run, fit_state, loss, run.lr)
            val = evaluate(
                task.model,
                run.data.val,
                task.evaluator,
                device=info.device,
                batch_size=cfg.eval_batch_size or run.micro_batch * 2,
                workers=run.workers,
                dist_info=info,
            )
            record = _epoch_record(run, epoch, fit_state.step, losses, val, started)
            fit_state.history.append(record)
            callbacks.on_validation(run, fit_state, record, val)  # vetoes, best model
            fit_state.epoch = epoch + 1
            callbacks.on_epoch_end(run, fit_state, record, val)  # logs, curves, progress
            if info.is_main:  # last.pt is the commit point of the epoch
                save_state(
                    run.out / "last.pt",
                    model=task.model,
                    optimizer=run.optimizer,
                    scheduler=run.scheduler,
                    sampler=run.sampler,
                    fit=fit_state,
                    config=cfg.to_dict(),
                )
            barrier(info)
    finally:
        callbacks.on_fit_end(run, fit_state)


def train_step(run: Run, batches: Any) -> float:
    """One optimiser step over ``grad_accum`` micro-batches; returns the global mean loss."""
    cfg, task, device = run.cfg, run.task, run.info.device
    run.optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        images, targets = next(batches)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        # DDP all-reduces gradients only on the last micro-batch of the step.
        last = micro == cfg.grad_accum - 1
        with nullcontext() if last else task.no_sync(), autocast(device):
            loss = task(images, targets)["loss"] / cfg.grad_accum
        loss.backward()
        total += loss.detach().float()
    mean_loss = all_reduce_mean(total, run.info).item()
    if math.isfinite(mean_loss):
        if cfg.clip_grad_norm > 0:
            trainable = [p for p in task.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
        run.optimizer.step()
    return mean_loss


def _stop_if_diverged(run: Run, loss: float, step: int, epoch: int) -> None:
    if not math.isfinite(loss):
        raise TrainingError(
            f"the loss became {loss} at step {step} (epoch {epoch}); training stopped. Lower "
            f"--lr (now {run.optimizer.param_groups[0]['lr']:.3g}), raise --warmup-steps, or "
            "check the data for broken images"
        )


def _epoch_record(
    run: Run, epoch: int, step: int, losses: list[float], val: EvalResult, started: float
) -> dict[str, Any]:
    scores = run.task.evaluator.scalars(val.report)
    return {
        "type": "epoch",
        "epoch": epoch + 1,
        "step": step,
        "lr": run.lr,
        "train_loss": sum(losses) / len(losses),
        "val_loss": val.loss,
        **{f"val_{name}": value for name, value in scores.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }


# ---- phase 4: finish ----------------------------------------------------------------------
def finish(run: Run, fit_state: FitState, callbacks: Callback | None = None) -> TrainResult:
    """The test split, evaluated with the best model as saved (its own preprocessing)."""
    test = None
    if run.data.test is not None and fit_state.best_epoch is not None and run.info.is_main:
        best = run.task.load_saved(run.out / "best").to(run.info.device)
        test = evaluate(
            best,
            run.data.test,
            run.task.evaluator,
            device=run.info.device,
            batch_size=run.cfg.eval_batch_size or 64,
            workers=run.workers,
        )
        title = f"test split, best epoch {fit_state.best_epoch}"
        run.task.evaluator.write(test, run.out / "test", title)
    if callbacks is not None:
        callbacks.on_test_end(run, fit_state, test)  # the model card's results, the trackers'
    barrier(run.info)
    return TrainResult(
        run.out,
        fit_state.best_epoch,
        fit_state.best_val_loss,
        fit_state.history,
        test,
        list(run.data.splits.classes),
    )


def plan(run: Run) -> str:
    """What is about to happen, in a few lines (printed before the first epoch)."""
    cfg, info, model = run.cfg, run.info, run.task.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    height, width = run.task.spec.image_size
    input_text = run.task.input_text or f"input {height}x{width}"
    mix = f"; mix: {cfg.mix} (alpha {cfg.mix_alpha:g})" if cfg.mix != "none" else ""
    return "\n".join(
        [
            f"model: {run.task.description} ({total / 1e6:.2f}M parameters, "
            f"{trainable / 1e6:.2f}M trainable), {input_text}, device {info.device} "
            f"x {info.world_size} process(es)",
            run.data_summary + f"; augment: {cfg.augment}{mix}",
            run.recipe_summary,
            f"optimisation: {cfg.optimizer}, batch {cfg.batch_size} (= {info.world_size} x "
            f"{cfg.grad_accum} x {run.micro_batch}), {cfg.epochs} epochs x {run.steps_per_epoch} steps",
        ]
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr)
