"""Slide-level learning as a training task: bags of tile embeddings in, a MIL directory out.

The trainer's loop runs it unchanged (phases, callbacks, exact resume, warm-up + cosine, the test
pass on what was saved). What differs from image classification:

- ``mil_data``: the slide table, splits by patient (and folds), bags read from Parquet one at a
  time; a micro-batch is one bag (bags differ in size; nothing is padded), ``--batch-size`` bags
  are accumulated per optimiser step (``mil_config.mil_recipe``);
- the loss: cross-entropy over the classes (binary and multi-class) or BCE per label
  (multi-label), weighted by inverse class frequency under ``--balance weighted-loss`` (the
  default ``auto`` picks it when the classes differ in size); CLAM-SB adds its instance
  clustering loss (``--clam-weight``);
- ``best/`` is the last epoch's model (``--best-epoch last``, see ``KeepLastEpoch``) unless
  ``--best-epoch val-loss`` asks for the trainer's lowest validation loss;
- ``mil_eval``: AUC, balanced accuracy and macro-F1 every epoch; on the test split, bootstrap
  95% intervals and per-slide predictions;
- ``best/`` is a MIL directory (``vitkit.checkpoints.mil``) that names the tile encoder and the
  tiling, so a new slide can be predicted from its file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.atomic_files import atomic_write_text
from vitkit.checkpoints.mil import MILModel, load_mil, save_mil
from vitkit.errors import TrainingError
from vitkit.models.mil import (
    MULTI_LABEL,
    SINGLE_LABEL,
    CLAMSingleBranch,
    MILConfig,
    MILNetwork,
    build_mil,
)
from vitkit.training import data as vdata
from vitkit.training.callbacks import Callback
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.evaluate import EvalResult
from vitkit.training.model_spec import ModelSpec
from vitkit.training.run import Run
from vitkit.training.state import FitState
from vitkit.training.task import TrainingTask
from vitkit.training.task_builder import TaskBuilder
from vitkit.training.tasks import mil_data
from vitkit.training.tasks.mil_config import MILSettings
from vitkit.training.tasks.mil_eval import MILEvaluator

__all__ = ["MILBuilder", "MILTask"]


class MILTask(TrainingTask):
    """The bag loss (plus CLAM's instance loss); returns ``{"loss", "logits"}``."""

    def __init__(
        self,
        spec: ModelSpec,
        labels: list[str],
        settings: MILSettings,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(spec)
        self.labels = list(labels)
        self.multi_label = settings.multi_label
        self.clam_weight = settings.clam_weight
        self.class_weight: torch.Tensor | None = None
        self.evaluator = MILEvaluator(
            self.labels, multi_label=self.multi_label, bootstrap=settings.bootstrap, seed=seed
        )
        assert isinstance(spec.model, MILNetwork)
        config = spec.model.config
        self.input_text = f"bags of {config.input_dim}-d tile embeddings"

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        output = self.network(features)
        logits = output.logits.float()
        weight = self.class_weight.to(logits.device) if self.class_weight is not None else None
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=weight)
        else:
            loss = F.cross_entropy(logits, targets, weight=weight)
        if isinstance(self.model, CLAMSingleBranch) and self.clam_weight > 0:
            instance = self.model.instance_loss(output, targets)
            loss = (1 - self.clam_weight) * loss + self.clam_weight * instance
        return {"loss": loss, "logits": logits}


class MILBuilder(TaskBuilder):
    """A slide table's rows (embeddings known) -> a ``MILTask``.

    ``encoder`` and ``tiling``: how the embeddings were made (saved with the model, for
    predicting new slides); ``fold``: this run's fold of ``settings.folds`` (cross-validation).
    """

    def __init__(
        self,
        settings: MILSettings,
        rows: Sequence[mil_data.SlideRow],
        *,
        encoder: dict[str, Any] | None = None,
        tiling: dict[str, Any] | None = None,
        fold: int | None = None,
    ) -> None:
        self.settings = settings
        self.rows = list(rows)
        self.encoder = dict(encoder or {})
        self.tiling = dict(tiling or {})
        self.fold = fold

    def check(self, cfg: TrainConfig) -> None:
        try:
            self.settings.check()
        except ValueError as error:
            raise TrainingError(str(error)) from None
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if cfg.grad_accum * world != cfg.batch_size or (cfg.eval_batch_size or 1) != 1:
            raise TrainingError(
                f"--batch-size {cfg.batch_size}: a MIL step takes one bag per forward on each "
                f"of {world} process(es) and accumulates the rest, so it must be a multiple of "
                f"{world} (and cfg filled by mil_recipe)"
            )

    def recipe_note(self, cfg: TrainConfig) -> str:
        """The plan's line about the optimisation (see ``mil_config.mil_recipe``)."""
        return (
            f"recipe: multiple-instance learning: {cfg.optimizer} (lr {cfg.lr:g}, weight decay "
            f"{cfg.weight_decay:g}), warm-up {cfg.warmup_fraction:.0%} then cosine, one bag per "
            "forward"
        )

    def callbacks(self, cfg: TrainConfig) -> list[Callback]:
        return [KeepLastEpoch()] if self.settings.best_epoch == "last" else []

    # ---- the data -------------------------------------------------------------------------------
    def read_splits(self, cfg: TrainConfig, out: Path | None) -> vdata.DataSplits:
        split_file = out / "split.json" if out is not None else None
        if split_file is not None and cfg.resume and split_file.is_file():
            rows = mil_data.read_split(split_file, self.rows)
        else:
            rows = mil_data.assign_splits(
                self.rows,
                val_fraction=cfg.val_fraction,
                test_fraction=self.settings.test_fraction,
                seed=cfg.seed,
                fold=self.fold,
                folds=self.settings.folds,
            )
            if split_file is not None:
                extra = {"fold": self.fold, "folds": self.settings.folds, "seed": cfg.seed}
                mil_data.write_split(split_file, rows, extra)
        mil_data.check_patients(rows, cfg.data)
        labels = mil_data.label_names(self.rows)
        multi = self.settings.multi_label

        def split(name: str) -> list[vdata.Sample]:
            return list(mil_data.bag_samples([r for r in rows if r.split == name], labels, multi))

        return vdata.DataSplits(labels, split("train"), split("val"), split("test"), "split.json")

    def check_splits(self, cfg: TrainConfig, splits: vdata.DataSplits) -> None:
        least = 1 if self.settings.multi_label else 2
        if len(splits.classes) < least:
            raise TrainingError(
                f"--data {cfg.data}: {len(splits.classes)} class(es) in column "
                f"{self.settings.label_column!r}; a slide classifier needs at least {least}"
            )
        for name, samples in (("training", splits.train), ("validation", splits.val)):
            if not samples:
                raise TrainingError(
                    f"--data {cfg.data}: the {name} split is empty; list more slides (patients), "
                    "or change --val-fraction / --test-fraction / the split column"
                )
        if cfg.batch_size > len(splits.train):
            raise TrainingError(
                f"--batch-size {cfg.batch_size} is larger than the {len(splits.train)} training "
                "slides"
            )

    def describe_data(self, cfg: TrainConfig, data: vdata.RunData) -> str:
        def bags(dataset: Any) -> list[mil_data.BagSample]:
            return list(dataset.bags) if dataset is not None else []

        train, val, test = bags(data.train), bags(data.val), bags(data.test)
        patients = len({s.patient for s in train + val + test})
        counts = mil_data.describe_counts(train, data.splits.classes, self.settings.multi_label)
        sampled = (
            f"; at most {self.settings.max_tiles} tiles per training bag"
            if self.settings.max_tiles
            else ""
        )
        return (
            f"data: {len(train)} train / {len(val)} val / {len(test)} test slides of {patients} "
            f"patients; train counts: {counts}\nbalance: {data.balance}{sampled}"
        )

    # ---- the task -------------------------------------------------------------------------------
    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> MILTask:
        first = splits.train[0]
        assert isinstance(first, mil_data.BagSample)
        settings = self.settings
        config = MILConfig(
            model=settings.mil_model,
            input_dim=mil_data.bag_dim(first.embeddings),
            num_classes=len(splits.classes),
            problem_type=MULTI_LABEL if settings.multi_label else SINGLE_LABEL,
            hidden_dim=settings.hidden_dim,
            attention_dim=settings.attention_dim,
            dropout=settings.dropout,
            clam_k=settings.clam_k,
            heads=settings.heads,
            layers=settings.layers,
        )
        try:
            network = build_mil(config)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        return MILTask(self._spec(network, splits.classes), splits.classes, settings, seed=cfg.seed)

    def _spec(self, network: MILNetwork, labels: list[str]) -> ModelSpec:
        encoder, tiling = self.encoder, self.tiling

        def save(model: nn.Module, directory: Path) -> None:
            assert isinstance(model, MILNetwork)
            save_mil(MILModel(model, labels, encoder, tiling), directory)

        def load(directory: Path) -> nn.Module:
            return load_mil(directory).network

        config = network.config
        return ModelSpec(
            model=network,
            image_size=(0, 0),  # bags, not images: nothing is resized
            mean=(),
            std=(),
            eval_transform=_no_images,
            save=save,
            load=load,
            description=f"{config.model} over {config.input_dim}-d tiles, {len(labels)} "
            f"{'labels' if config.problem_type == MULTI_LABEL else 'classes'}",
        )

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        multi = self.settings.multi_label
        train = [s for s in splits.train if isinstance(s, mil_data.BagSample)]
        balance = _balance(cfg.balance, train, len(splits.classes), multi)
        indices = list(range(len(train)))
        if balance == "oversample":
            indices = vdata.oversample_indices([s.label for s in train], cfg.seed)
        weight = (
            mil_data.class_weight(train, len(splits.classes), multi)
            if balance == "weighted-loss"
            else None
        )
        if isinstance(task, MILTask):
            task.class_weight = weight
            if self.settings.standardize and isinstance(task.model, MILNetwork):
                mean, std = mil_data.feature_statistics(train)
                task.model.set_feature_statistics(torch.from_numpy(mean), torch.from_numpy(std))
        if info.is_main:
            record = {
                "mil": self.settings.to_dict(),
                "encoder": self.encoder,
                "tiling": self.tiling,
            }
            atomic_write_text(out / "mil_config.json", json.dumps(record, indent=2) + "\n")

        def dataset(
            samples: list[vdata.Sample], max_tiles: int | None = None
        ) -> mil_data.BagDataset:
            bags = [s for s in samples if isinstance(s, mil_data.BagSample)]
            return mil_data.BagDataset(bags, multi_label=multi, max_tiles=max_tiles)

        return vdata.RunData(
            splits=splits,
            train=dataset(splits.train, self.settings.max_tiles),
            val=dataset(splits.val),
            test=dataset(splits.test) if splits.test else None,
            train_indices=indices,
            balance=balance,
            class_weight=weight,
            bad=[],
        )


class KeepLastEpoch(Callback):
    """``--best-epoch last``: every epoch but the last is refused as the best model, so best/ is
    the end of the schedule. Why it is the default: on MNIST-bags with 20-40 validation bags
    the validation loss rose after 1-3 epochs (a few confidently wrong bags) while the test AUC
    kept improving, so the lowest validation loss kept an early, weaker epoch (gated ABMIL,
    100 training bags: test AUC 0.56 against 0.60; ``benchmarks/bench_mil_bags.py``)."""

    def on_validation(
        self, run: Run, fit: FitState, record: dict[str, Any], val: EvalResult
    ) -> None:
        if record["epoch"] < run.cfg.epochs and "not_best_because" not in record:
            record["not_best_because"] = "--best-epoch last keeps the last epoch"


def _balance(mode: str, train: list[mil_data.BagSample], classes: int, multi_label: bool) -> str:
    """``auto``: class weights in the loss when the classes (labels) differ in count."""
    if mode == "oversample" and multi_label:
        raise TrainingError("--balance oversample needs one label per slide: use weighted-loss")
    if mode != "auto":
        return mode
    if multi_label:
        return "weighted-loss"
    counts = vdata.class_counts([s.label for s in train], classes)
    present = counts[counts > 0]
    return "weighted-loss" if present.min() != present.max() else "none"


def _no_images(image: Any) -> torch.Tensor:
    raise TypeError("a MIL model takes tile embeddings, not images")
