"""The settings of a training run, each written once: type, default, help and choices.

``TrainConfig`` (``vitkit train``) and ``DistillConfig`` (``vitkit distill``'s extra settings)
are plain dataclasses whose fields carry their command-line help in ``metadata`` (see
``option``); ``vitkit.cli._options`` turns them into argparse options, as transformers'
``HfArgumentParser`` does, so a default or a choice lives here and nowhere else. This module
imports neither torch nor torchvision: ``vitkit train --help`` reads it at start-up.

Recipes: the optimiser, augmentation, mixing, label smoothing, warm-up and a from-scratch ViT's
patch embedding left unset (``None``) are filled in by ``resolve_recipe`` from one of two
recipes, chosen by ``from_scratch``:

- ``fine-tune``: the ViT paper's fine-tuning recipe (Appendix B.1.1): SGD momentum 0.9, no weight
  decay, lr 0.01, 5% warm-up then cosine, random-resized crops and horizontal flips.
- ``from-scratch``: a transformer trained from random weights on a small data set: AdamW with
  weight decay 0.05, a 10% warm-up and label smoothing 0.1 as DeiT trains, at lr 2e-3, no
  augmentation or batch mixing, and a convolutional stem (``patch_embed="conv"``, Xiao et al.
  2021) instead of the paper's linear patch projection: the stem lends the transformer a CNN's
  locality, which a few thousand images cannot teach it in 15 epochs. In that budget a small
  ViT underfits (its training loss stays above its validation loss), so augmentation, which
  fights overfitting, is off; a higher learning rate or mean pooling did not help either. On a
  set as small as digits (20 steps an epoch) twice the optimiser steps (batch 32) lifted it, on
  Fashion-MNIST not (``benchmarks/bench_from_scratch_recipe.py``; BENCHMARKS.md has the table).
  Never flips unless asked: a mirrored 6 or letter is another symbol. Ask for ``--augment
  shift`` (no flips), or ``natural`` / ``seed`` where orientation carries no meaning, for longer
  schedules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vitkit.models.config import PATCH_EMBEDS
from vitkit.options import option

AUGMENT_PRESETS = ("none", "seed", "natural", "shift")  # see vitkit.training.augment
MIX_MODES = ("none", "mixup", "cutmix")
BALANCE_MODES = ("auto", "none", "oversample", "weighted-loss")
OPTIMIZERS = ("sgd", "adamw")
DISTILL_KINDS = ("hard", "soft", "none")
REPORT_TO = ("none", "tensorboard", "mlflow")  # see vitkit.training.tracking

# Peak learning rate and weight decay when not given: they follow the optimiser.
LR_DEFAULTS = {"sgd": 0.01, "adamw": 1e-3}
WEIGHT_DECAY_DEFAULTS = {"sgd": 0.0, "adamw": 0.05}


@dataclass(frozen=True)
class Recipe:
    """The settings a run gets for every one of these fields it leaves unset."""

    name: str
    optimizer: str
    lr: float  # for the recipe's optimizer; another --optimizer gets LR_DEFAULTS
    warmup_fraction: float
    label_smoothing: float
    augment: str
    mix: str
    patch_embed: str | None  # a from-scratch ViT's tokeniser; None: the checkpoint's own

    def describe(self) -> str:
        stem = {"conv": ", convolutional stem", "linear": ", linear patch embedding"}
        return (
            f"{self.optimizer} (lr {self.lr:g}, weight decay "
            f"{WEIGHT_DECAY_DEFAULTS[self.optimizer]:g}), warm-up {self.warmup_fraction:.0%} of "
            f"the steps then cosine, label smoothing {self.label_smoothing:g}, augment "
            f"{self.augment}, mix {self.mix}{stem.get(self.patch_embed or '', '')}"
        )


RECIPES = {
    "fine-tune": Recipe("fine-tune", "sgd", 0.01, 0.05, 0.0, "natural", "none", None),
    "from-scratch": Recipe("from-scratch", "adamw", 2e-3, 0.1, 0.1, "none", "none", "conv"),
}


def recipe_default(name: str, fmt: str = "{}") -> str:
    """``default_help`` of a recipe field: what each recipe gives it."""
    given = {
        recipe.name: fmt.format(getattr(recipe, name))
        for recipe in RECIPES.values()
        if getattr(recipe, name) is not None
    }
    if len(set(given.values())) == 1 and len(given) == len(RECIPES):
        return f"from the recipe: {next(iter(given.values()))}"
    said = {"fine-tune": "fine-tuning", "from-scratch": "from scratch"}
    return "from the recipe: " + ", ".join(f"{value} {said[name]}" for name, value in given.items())


RECIPE_FIELDS = (
    "optimizer",
    "warmup_fraction",
    "label_smoothing",
    "augment",
    "mix",
    "patch_embed",
)  # + lr


@dataclass
class TrainConfig:
    data: str = option(
        help="image folder: DATA/<class>/*, or DATA/{train,val,test}/<class>/*; a datasets "
        "save_to_disk folder, Parquet files (Hub layout) or WebDataset .tar shards, with an "
        "image and a label column; or, for several labels per image, a label table (CSV "
        "path,labels / JSONL) or a folder of train/val/test tables",
        group="data",
    )
    out: str = option(help="run folder for checkpoints, logs and plots", group="data")
    # ---- model
    model: str | None = option(
        None,
        "checkpoint to fine-tune: HF directory, hub id, timm file or .npz",
        group="model",
        flags=("--model", "-m"),
        default_help="none: give one, or --from-scratch",
    )
    from_scratch: bool = option(
        False,
        "random initialisation from --preset, trained with the from-scratch recipe",
        group="model",
    )
    preset: str = option(
        "vit-tiny-patch16-224",
        "architecture for --from-scratch (e.g. vit-small-patch16-224, vit-tiny-patch4-32)",
        group="model",
    )
    model_overrides: dict[str, Any] = option(
        help=(
            "a ViTConfig field (repeatable): the architecture of --from-scratch, e.g. "
            "hidden_size=64; with --model, what the file does not record, e.g. "
            "num_attention_heads=6 for a timm state dict"
        ),
        group="model",
        flags=("--model-arg",),
        metavar="KEY=VALUE",
        default_factory=dict,
    )
    image_size: int | None = option(
        None,
        "training resolution; position embeddings are resampled (e.g. 384)",
        group="model",
        default_help="the checkpoint's or the preset's",
    )
    patch_embed: str | None = option(
        None,
        "how a --from-scratch ViT turns pixels into tokens: linear (the paper's patch "
        "projection; transformers loads the model) or conv (a convolutional stem; vitkit only)",
        group="model",
        choices=PATCH_EMBEDS,
        default_help=recipe_default("patch_embed"),
    )
    freeze_backbone: bool = option(False, "train only the new head (linear probe)", group="model")
    # ---- optimisation
    epochs: int = option(10, "passes over the training set", group="optimisation")
    batch_size: int = option(
        64,
        "global images per optimiser step, over all processes and --grad-accum micro-batches",
        group="optimisation",
        flags=("--batch-size", "-b"),
    )
    grad_accum: int = option(1, "micro-batches per optimiser step", group="optimisation")
    optimizer: str | None = option(
        None,
        "sgd (momentum, the paper's fine-tuning) or adamw",
        group="optimisation",
        choices=OPTIMIZERS,
        default_help=recipe_default("optimizer"),
    )
    lr: float | None = option(
        None,
        "peak learning rate",
        group="optimisation",
        default_help=recipe_default("lr", "{:g}")
        + "; "
        + ", ".join(f"{lr:g} for {name} otherwise" for name, lr in LR_DEFAULTS.items()),
    )
    weight_decay: float | None = option(
        None,
        "decoupled weight decay (adamw: weight matrices only)",
        group="optimisation",
        default_help=", ".join(f"{wd:g} for {name}" for name, wd in WEIGHT_DECAY_DEFAULTS.items()),
    )
    momentum: float = option(0.9, "SGD momentum", group="optimisation")
    warmup_fraction: float | None = option(
        None,
        "share of the steps for the linear warm-up",
        group="optimisation",
        default_help=recipe_default("warmup_fraction", "{:g}"),
    )
    warmup_steps: int | None = option(
        None,
        "warm-up steps (overrides --warmup-fraction)",
        group="optimisation",
        default_help="from --warmup-fraction",
    )
    clip_grad_norm: float = option(1.0, "global gradient-norm clip (0 = off)", group="optimisation")
    label_smoothing: float | None = option(
        None,
        "cross-entropy label smoothing",
        group="optimisation",
        default_help=recipe_default("label_smoothing", "{:g}"),
    )
    # ---- data
    val_fraction: float = option(0.1, "validation share when DATA has no val/", group="data")
    balance: str = option(
        "auto",
        "class balance: auto = oversample when class counts differ",
        group="data",
        choices=BALANCE_MODES,
    )
    augment: str | None = option(
        None,
        "augmentation preset (see vitkit.training.augment; shift has no flips)",
        group="data",
        choices=AUGMENT_PRESETS,
        default_help=recipe_default("augment"),
    )
    # Batch mixing after augmentation (vitkit.training.augment.mix_batch); the loss then sees soft
    # targets (N, classes) and, under distillation, the teacher sees the mixed images.
    mix: str | None = option(
        None,
        "mix each training batch: mixup or cutmix, labels mixed alike",
        group="data",
        choices=MIX_MODES,
        default_help=recipe_default("mix"),
    )
    mix_alpha: float = option(1.0, "Beta(alpha, alpha) of the mixing weight", group="data")
    image_column: str | None = option(
        None,
        "the image column of a stored dataset (datasets, Parquet)",
        group="data",
        default_help="its Image feature, else image / img",
    )
    label_column: str | None = option(
        None,
        "the label column of a stored dataset; lists of labels train multi-label",
        group="data",
        default_help="its ClassLabel feature, else label / labels",
    )
    on_bad_image: str = option(
        "skip",
        "unreadable images: skip with a report, or stop",
        group="data",
        choices=("skip", "fail"),
    )
    cache_images: str = option(
        "auto",
        "keep decoded images in memory (auto: up to 20k images)",
        group="data",
        choices=("auto", "yes", "no"),
    )
    workers: int | None = option(
        None,
        "data-loading processes",
        group="data",
        default_help="0 with the cache, else up to 8",
    )
    eval_batch_size: int | None = option(
        None, "images per evaluation batch", group="data", default_help="twice the micro-batch"
    )
    # ---- run
    seed: int = option(
        0, "seed for the split, initialisation, shuffling and augmentation", group="run"
    )
    device: str | None = option(
        None, "cpu, cuda or cuda:N", group="run", default_help="cuda when available"
    )
    resume: bool = option(False, "continue from OUT/last.pt", group="run")
    log_every: int = option(10, "log the loss every N steps", group="run")
    progress: bool = option(True, "progress bars", group="run", flags=("--no-progress",))
    # ---- tracking
    report_to: list[str] = option(
        help="experiment trackers, comma-separated: none, tensorboard (OUT/tensorboard), mlflow "
        "($MLFLOW_TRACKING_URI, else ./mlruns)",
        group="tracking",
        choices=REPORT_TO,
        default_factory=lambda: ["none"],
    )
    experiment: str | None = option(
        None,
        "MLflow experiment the run is filed under",
        group="tracking",
        default_help="$MLFLOW_EXPERIMENT_NAME, else vitkit",
    )
    run_name: str | None = option(
        None, "the run's name in the trackers", group="tracking", default_help="OUT's folder name"
    )
    # vitkit compare files each row's run under one parent run (MLflow's nested runs).
    parent_run: str | None = option(
        None, "MLflow run id this run is nested under", group="tracking", cli=False
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def recipe(self) -> Recipe:
        return RECIPES["from-scratch" if self.from_scratch else "fine-tune"]


def resolve_recipe(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every recipe field it left unset (None) taken from its recipe."""
    recipe = cfg.recipe
    filled = {name: getattr(recipe, name) for name in RECIPE_FIELDS if getattr(cfg, name) is None}
    optimizer = str(filled.get("optimizer", cfg.optimizer))
    if cfg.lr is None:
        filled["lr"] = recipe.lr if optimizer == recipe.optimizer else LR_DEFAULTS[optimizer]
    return dataclasses.replace(cfg, **filled)


def recipe_note(cfg: TrainConfig) -> str:
    """One line for the plan: the recipe and which of its settings the run overrides."""
    recipe = cfg.recipe
    mine = [
        f"{name.replace('_', '-')} {getattr(cfg, name)}"
        for name in (*RECIPE_FIELDS, "lr")
        if getattr(cfg, name) is not None and getattr(cfg, name) != getattr(recipe, name)
    ]
    note = f"recipe: {recipe.name}: {recipe.describe()}"
    return note + (f"; yours: {', '.join(mine)}" if mine else "")


@dataclass
class DistillConfig:
    """What ``vitkit distill`` adds to a training run (see vitkit.training.tasks.distill)."""

    teacher: str = option(
        help="teacher: any model vitkit loads (HF ResNet or ViT directory, student directory, ...)",
        group="distillation",
    )
    student: str = option(
        help="a preset trained from scratch (vit-tiny-patch4-32; --model-arg overrides fields), "
        "a ViT checkpoint to start from, or a student directory",
        group="distillation",
    )
    # DeiT's defaults; `vitkit compare` picks soft T=4 alpha 0.7 for its CPU-sized student
    kind: str = option(
        "hard",
        "teacher term: hard (its arg-max class), soft (KL at --temperature) or none",
        group="distillation",
        choices=DISTILL_KINDS,
    )
    alpha: float = option(0.5, "weight of the teacher term", group="distillation")
    temperature: float = option(1.0, "softmax temperature of the soft term", group="distillation")
