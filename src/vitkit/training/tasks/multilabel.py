"""Multi-label classification: any number of labels per image, from a label table.

- Data: a CSV / JSONL label table (``vitkit.training.labels``); targets are multi-hot rows.
- Loss: binary cross-entropy on the logits, one sigmoid per label. Rare labels: ``--balance
  oversample`` (the default when label counts differ) repeats images of rare labels;
  ``weighted-loss`` weighs each label's positives by negatives / positives (BCE ``pos_weight``).
  ``--mix mixup|cutmix`` blends the multi-hot targets as it blends the images;
  ``--label-smoothing e`` moves every target e/2 towards 0.5 (1 -> 1 - e/2, 0 -> e/2).
- Judged by plain BCE (no weights: runs with different losses compare), so the best epoch is the
  one with the lowest validation BCE. Each validation pass also tunes one threshold per label
  (max F1 on the validation split); ``best/`` is saved with the thresholds of its epoch and
  ``problem_type: multi_label_classification``, so every vitkit command (and transformers'
  pipeline) reads it as a sigmoid head. The test pass applies the saved thresholds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import TrainingError
from vitkit.training import data as vdata
from vitkit.training import labels as vlabels
from vitkit.training.augment import build_train_transform, check_mix, mix_batch
from vitkit.training.checks import check_vit_settings
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.evaluate import EvalResult, logits_of
from vitkit.training.metrics import format_multilabel_report, multilabel_report, tune_thresholds
from vitkit.training.model_spec import ModelFactory, ModelSpec
from vitkit.training.specs import vit_model_spec
from vitkit.training.stored_data import prepare_stored_multilabel, store_kind
from vitkit.training.task import TrainingTask
from vitkit.training.task_builder import TaskBuilder

MULTI_LABEL = "multi_label_classification"  # HF's problem_type (= vitkit.inference.heads')
DEFAULT_THRESHOLD = 0.5


def saved_thresholds(model: nn.Module, num_labels: int) -> np.ndarray | None:
    """The model's own decision thresholds (its config's), one per label, or None."""
    thresholds = getattr(getattr(model, "config", None), "thresholds", None)
    if thresholds is None:
        return None
    return np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (num_labels,)).copy()


class MultiLabelEvaluator:
    """BCE, sigmoid scores, and the multi-label report at chosen thresholds.

    Thresholds, first that applies: ``thresholds`` given here (``vitkit eval --threshold``), the
    model's saved ones, tuned on the split itself when ``tune`` (validation during training; the
    last tuned set is kept in ``tuned`` for the task to save), else 0.5.
    """

    def __init__(
        self, labels: list[str], *, tune: bool = False, thresholds: np.ndarray | None = None
    ) -> None:
        self.labels = list(labels)
        self.tune = tune
        self.thresholds = thresholds
        self.tuned: np.ndarray | None = None

    def batch(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        logits = logits_of(model(images)).float()
        losses = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
        saved = saved_thresholds(model, len(self.labels))
        row = (
            torch.full((len(self.labels),), float("nan")) if saved is None else torch.tensor(saved)
        )
        return {
            "loss": losses.mean(dim=-1),
            "scores": logits.sigmoid(),
            "saved_thresholds": row.to(logits.device).expand(len(logits), -1),
        }

    def report(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        scores, saved = outputs["scores"], outputs["saved_thresholds"][0]
        if self.thresholds is not None:
            thresholds, source = self.thresholds, "given"
        elif not np.isnan(saved).any():
            thresholds, source = saved, "saved with the model"
        elif self.tune:
            thresholds, tuned = tune_thresholds(targets, scores, DEFAULT_THRESHOLD)
            self.tuned = thresholds
            source = f"tuned on this split (max F1; {len(tuned) - sum(tuned)} label(s) without a positive image kept {DEFAULT_THRESHOLD})"
        else:
            thresholds, source = np.full(len(self.labels), DEFAULT_THRESHOLD), "default 0.5"
        report = multilabel_report(targets, scores, thresholds, self.labels)
        at_half = multilabel_report(targets, scores, DEFAULT_THRESHOLD, self.labels)
        report["thresholds_from"] = source
        report["macro_f1_at_0.5"] = at_half["macro_f1"]
        report["micro_f1_at_0.5"] = at_half["micro_f1"]
        return report

    def scalars(self, report: dict[str, Any]) -> dict[str, float]:
        names = ("mAP", "macro_f1", "micro_f1", "roc_auc", "macro_f1_at_0.5")
        return {name: report[name] for name in names}

    def write(self, result: EvalResult, directory: Path, title: str) -> None:
        save_multilabel_outputs(result, self.labels, directory, title)


def save_multilabel_outputs(
    result: EvalResult, labels: list[str], directory: Path, title: str
) -> None:
    """metrics.json (the report + loss), report.txt (the table) and scores.csv (per image)."""
    directory.mkdir(parents=True, exist_ok=True)
    metrics = {"title": title, "loss": result.loss, **result.report}
    atomic_write_text(directory / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(directory / "report.txt", format_multilabel_report(result.report) + "\n")
    thresholds = np.array([result.report["per_class"][label]["threshold"] for label in labels])
    lines = ["path,true,predicted," + ",".join(labels)]
    for path, truth, scores in zip(
        result.paths, result.targets, result.outputs["scores"], strict=True
    ):
        true = ";".join(label for label, t in zip(labels, truth, strict=True) if t > 0)
        predicted = ";".join(
            name for name, s, t in zip(labels, scores, thresholds, strict=True) if s >= t
        )
        lines.append(f"{path},{true},{predicted}," + ",".join(f"{s:.6f}" for s in scores))
    atomic_write_text(directory / "scores.csv", "\n".join(lines) + "\n")


class MultiLabelTask(TrainingTask):
    """BCE-with-logits on the (mixed) batch; returns ``{"loss", "logits"}``.

    ``blend`` and ``label_loss`` are the two halves of ``forward`` that a task built on this one
    reuses (distillation: the same mixing and the same loss on the labels, plus a teacher's).
    """

    pos_weight: torch.Tensor | None

    def __init__(
        self,
        spec: ModelSpec,
        labels: list[str],
        *,
        mix: str = "none",
        mix_alpha: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(spec)
        config = getattr(self.model, "config", None)
        if not hasattr(config, "problem_type"):
            raise TrainingError(
                f"{spec.description}: multi-label training needs a model whose config.json "
                "carries problem_type (a ViT); this one cannot say it has a sigmoid head"
            )
        self.model.config = config.replace(problem_type=MULTI_LABEL)  # type: ignore[union-attr]
        self.labels = list(labels)
        self.mix, self.mix_alpha = mix, mix_alpha
        self.label_smoothing = label_smoothing
        # --balance weighted-loss (set by prepare_data); a buffer, so .to() moves it, and not
        # persistent: best/ and last.pt hold the model only.
        self.register_buffer("pos_weight", None, persistent=False)
        self.judge = MultiLabelEvaluator(self.labels, tune=True)  # it keeps the tuned thresholds
        self.evaluator = self.judge

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        images, targets = self.blend(images, targets)
        logits = logits_of(self.network(images)).float()
        return {"loss": self.label_loss(logits, targets), "logits": logits}

    def blend(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as the loss sees it: mixed (images and multi-hot rows alike), smoothed."""
        targets = targets.float()
        if self.mix != "none":
            images, targets = mix_batch(images, targets, len(self.labels), self.mix, self.mix_alpha)
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        return images, targets

    def label_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """BCE-with-logits, rare labels' positives weighted under ``--balance weighted-loss``."""
        return F.binary_cross_entropy_with_logits(
            logits.float(), targets, pos_weight=self.pos_weight
        )

    def save(self, directory: Path) -> None:
        """best/ with problem_type and the thresholds tuned on this epoch's validation pass."""
        config: Any = self.model.config
        tuned = self.judge.tuned
        thresholds = [round(float(t), 6) for t in tuned] if tuned is not None else None
        self.model.config = config.replace(thresholds=thresholds)
        try:
            self.spec.save(self.model, directory)
        finally:
            self.model.config = config


class MultiLabelBuilder(TaskBuilder):
    """A label table -> a ``MultiLabelTask`` for the ViT that ``model_factory`` makes."""

    def __init__(self, model_factory: ModelFactory = vit_model_spec) -> None:
        self.model_factory = model_factory

    def check(self, cfg: TrainConfig) -> None:
        if not vlabels.is_label_table(cfg.data) and store_kind(cfg.data) is None:
            raise TrainingError(
                f"--data {cfg.data}: multi-label training reads a label table (a .csv / .jsonl "
                "file, or a folder with train.csv), see vitkit.training.labels"
            )
        if self.model_factory is vit_model_spec:  # other networks check their own settings
            check_vit_settings(cfg)

    def read_splits(self, cfg: TrainConfig, out: Path | None) -> vdata.DataSplits:
        if store_kind(cfg.data) is not None:  # datasets, Parquet, WebDataset: list labels
            columns = (cfg.image_column, cfg.label_column)
            return prepare_stored_multilabel(cfg.data, out, cfg.val_fraction, cfg.seed, columns)
        splits = vlabels.prepare_table_splits(cfg.data, out, cfg.val_fraction, cfg.seed)
        if splits.problems:
            if cfg.on_bad_image == "fail":
                raise vdata.DatasetError(
                    splits.report() + "\n(pass --on-bad-image skip to train without them)"
                )
            if out is not None:  # the process that writes the run folder says it once
                atomic_write_text(out / "bad_rows.txt", splits.report() + "\n")
                print(f"warning: skipping {splits.report()}", file=sys.stderr)
        # the samples carry multi-hot arrays where class folders have an int: DataSplits is a list
        train: list[Any] = splits.train
        val: list[Any] = splits.val
        test: list[Any] = splits.test
        return vdata.DataSplits(splits.labels, train, val, test, source=splits.source)

    def describe_data(self, cfg: TrainConfig, data: vdata.RunData) -> str:
        labels = data.splits.classes
        targets = np.stack([np.asarray(s.label) for s in data.train.samples])
        counts = dict(zip(labels, vlabels.label_counts(targets).tolist(), strict=True))
        return (
            f"data: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test) if data.test else 0} test images, {len(labels)} labels; training "
            f"images per label {counts}\n"
            f"balance: {data.balance} ({len(data.train_indices)} samples per epoch)"
        )

    def check_splits(self, cfg: TrainConfig, splits: vdata.DataSplits) -> None:
        if not splits.val:
            raise TrainingError(
                f"--data {cfg.data}: the validation split is empty; add rows, raise "
                "--val-fraction, or give a val table"
            )
        if cfg.batch_size > len(splits.train):
            raise TrainingError(
                f"--batch-size {cfg.batch_size} is larger than the training set "
                f"({len(splits.train)} images): use --batch-size {len(splits.train)} or less"
            )

    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> MultiLabelTask:
        assert cfg.mix is not None and cfg.label_smoothing is not None, "resolve_recipe(cfg) first"
        return MultiLabelTask(
            self.model_factory(cfg, splits.id2label),
            splits.classes,
            mix=cfg.mix,
            mix_alpha=cfg.mix_alpha,
            label_smoothing=cfg.label_smoothing,
        )

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        """Unreadable images reported as for image folders; rare labels oversampled or weighted."""
        scans = [
            vdata.scan_images(s, keep=cfg.cache_images != "no")
            for s in (splits.train, splits.val, splits.test)
        ]
        bad = [item for scan in scans for item in scan.bad]
        if bad:
            report = vdata.ScanResult([], bad, None).report()
            if cfg.on_bad_image == "fail":
                raise vdata.DatasetError(
                    report + "\n(pass --on-bad-image skip to train without them)"
                )
            if info.is_main:
                atomic_write_text(out / "bad_images.txt", report + "\n")
                print(f"warning: skipping {report}", file=sys.stderr)
        train, val, test = scans
        if not val.good:
            raise vdata.DatasetError(f"{cfg.data}: the validation split has no readable images")
        targets = np.stack([s.label for s in train.good])
        balance = _resolve_balance(cfg.balance, targets)
        indices = (
            vlabels.oversample_rare(targets)
            if balance == "oversample"
            else list(range(len(targets)))
        )
        if balance == "weighted-loss" and isinstance(task, MultiLabelTask):
            task.pos_weight = torch.from_numpy(vlabels.positive_weights(targets)).float()
        assert cfg.augment is not None and cfg.mix is not None, "resolve_recipe(cfg) first"
        check_mix(cfg.mix, cfg.mix_alpha)
        spec = task.spec
        transform = build_train_transform(cfg.augment, spec.image_size, spec.mean, spec.std)
        return vdata.RunData(
            splits=splits,
            train=vdata.ImageDataset(train.good, transform, train.images),
            val=vdata.ImageDataset(val.good, spec.eval_transform, val.images),
            test=vdata.ImageDataset(test.good, spec.eval_transform, test.images)
            if test.good
            else None,
            train_indices=indices,
            balance=balance,
            class_weight=None,
            bad=bad,
        )


def _resolve_balance(mode: str, targets: np.ndarray) -> str:
    """``auto``: oversample when some label has fewer than half the images of the commonest."""
    if mode not in vdata.BALANCE_MODES:
        raise TrainingError(f"unknown --balance {mode!r}: choose one of {vdata.BALANCE_MODES}")
    if mode != "auto":
        return mode
    counts = vlabels.label_counts(targets)
    present = counts[counts > 0]
    return "oversample" if present.size and present.min() * 2 < present.max() else "none"
