"""``TaskBuilder``: reads a run's data and makes its ``TrainingTask`` (``vitkit.training.task``).

The trainer calls, in this order::

    cfg = builder.resolve(cfg)                     the settings the task trains with
    builder.check(cfg)                             refuse impossible settings, before any work
    splits = builder.read_splits(cfg, out)         which images (or rows) are in which split
    builder.check_splits(cfg, splits)              refuse data these settings cannot train on
    task = builder.build(cfg, splits)              the task, its model sized for the data
    data = builder.prepare_data(cfg, out, task, splits, info)    the datasets, transformed
    builder.describe_data(cfg, data)               the plan's lines about the data
    builder.recipe_note(cfg)                       and its line about the recipe
    builder.callbacks(cfg)                         run before the built-in callbacks

The defaults read class folders (``vitkit.training.data``); a task with other data (images
without labels, label tables) overrides them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from vitkit.training import data as vdata
from vitkit.training.callbacks import Callback
from vitkit.training.checks import check_class_splits
from vitkit.training.config import TrainConfig, recipe_note
from vitkit.training.distributed import DistInfo
from vitkit.training.stored_data import prepare_stored_splits, store_kind
from vitkit.training.task import TrainingTask


class TaskBuilder(ABC):
    """Reads a run's data and builds its task (see the module docstring)."""

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` as this task trains with it (a recipe's values filled in); default: as given."""
        return cfg

    def check(self, cfg: TrainConfig) -> None:  # noqa: B027 - an optional hook, not abstract
        """Refuse settings this task cannot train with (before any work); TrainingError."""

    def callbacks(self, cfg: TrainConfig) -> list[Callback]:
        """What this task adds around the loop (pictures, vetoes); run before the built-in ones,
        so a veto is seen before the best model is chosen."""
        return []

    def check_splits(self, cfg: TrainConfig, splits: vdata.DataSplits) -> None:
        """Refuse data these settings cannot train on, before any image is decoded."""
        check_class_splits(cfg, splits)

    def describe_data(self, cfg: TrainConfig, data: vdata.RunData) -> str:
        """The plan's lines about the data (printed before the first epoch)."""
        classes = data.splits.classes
        counts = vdata.class_counts([s.label for s in data.train.samples], len(classes))
        return (
            f"data: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test) if data.test else 0} test images, {len(classes)} classes; train "
            f"counts {dict(zip(classes, counts.tolist(), strict=True))}\n"
            f"balance: {data.balance} ({len(data.train_indices)} samples per epoch)"
        )

    def recipe_note(self, cfg: TrainConfig) -> str:
        """The plan's line about the recipe (default: which of train's recipes, what changed)."""
        return recipe_note(cfg)

    def read_splits(self, cfg: TrainConfig, out: Path | None) -> vdata.DataSplits:
        """The images of each split; ``out``: where split.json is written (None: read only)."""
        if store_kind(cfg.data) is not None:  # datasets, Parquet, WebDataset
            columns = (cfg.image_column, cfg.label_column)
            return prepare_stored_splits(cfg.data, out, cfg.val_fraction, cfg.seed, columns)
        return vdata.prepare_splits(cfg.data, out, cfg.val_fraction, cfg.seed)

    @abstractmethod
    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> TrainingTask:
        """The task for these splits (its model sized for their classes)."""

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        """The datasets of the run, transformed for ``task.spec``'s model."""
        return vdata.prepare_run_data(cfg, out, task.spec, splits, info.is_main)
