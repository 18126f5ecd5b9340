"""``train_mil``: slide-level training with the trainer's loop, one split or k folds by patient.

The task, its data and its metrics are ``vitkit.training.tasks.mil`` (and ``mil_data``,
``mil_eval``, ``mil_config``); this module only runs them (the tasks never import the trainer).

With ``settings.folds = K > 1`` the patients are dealt into K stratified folds and K runs train
in ``OUT/fold-<i>/`` (each a whole run folder: best/, last.pt, test/), fold i testing on its own
patients; ``OUT/cv_summary.json`` and ``cv_summary.csv`` hold every fold's test metrics (with
its bootstrap intervals) and their mean and standard deviation. ``--resume`` continues the
first unfinished fold; finished folds are evaluated again from their saved model.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.atomic_files import atomic_write_text
from vitkit.checkpoints.mil import MILModel
from vitkit.errors import TrainingError
from vitkit.training.callbacks import Callback
from vitkit.training.config import TrainConfig
from vitkit.training.evaluate import EvalResult, evaluate
from vitkit.training.tasks.mil import MILBuilder
from vitkit.training.tasks.mil_config import MILSettings, mil_recipe
from vitkit.training.tasks.mil_data import BagDataset, SlideRow, bag_dim, bag_samples
from vitkit.training.tasks.mil_eval import METRICS, MILEvaluator
from vitkit.training.trainer import TrainResult, train

__all__ = ["MILRunResult", "evaluate_mil", "train_mil"]


@dataclass
class MILRunResult:
    out: Path
    runs: list[TrainResult]  # one per fold (one in all without cross-validation)
    summary: dict[str, Any]  # per-fold test metrics, mean and std (cv_summary.json)


def train_mil(
    cfg: TrainConfig,
    settings: MILSettings,
    rows: Sequence[SlideRow],
    *,
    encoder: dict[str, Any] | None = None,
    tiling: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> MILRunResult:
    """Train on the slide table's ``rows`` (each with its embeddings file) as ``cfg`` and
    ``settings`` say; ``encoder`` / ``tiling`` are saved with the model (see
    ``vitkit.checkpoints.mil``)."""
    cfg = mil_recipe(cfg)
    if settings.folds == 1:
        builder = MILBuilder(settings, rows, encoder=encoder, tiling=tiling)
        result = train(cfg, builder, callbacks=callbacks)
        return MILRunResult(Path(cfg.out), [result], fold_summary([result]))
    runs = []
    for fold in range(settings.folds):
        fold_cfg = dataclasses.replace(cfg, out=str(Path(cfg.out) / f"fold-{fold}"))
        builder = MILBuilder(settings, rows, encoder=encoder, tiling=tiling, fold=fold)
        runs.append(train(fold_cfg, builder, callbacks=callbacks))
    summary = fold_summary(runs)
    write_summary(Path(cfg.out), summary)
    return MILRunResult(Path(cfg.out), runs, summary)


def fold_summary(runs: Sequence[TrainResult]) -> dict[str, Any]:
    """Each run's test metrics and, over runs, each metric's mean and standard deviation."""
    folds = []
    for index, run in enumerate(runs):
        report = run.test.report if run.test is not None else {}
        record: dict[str, Any] = {"fold": index, "best_epoch": run.best_epoch, "out": str(run.out)}
        record.update({name: report.get(name) for name in (*METRICS, "accuracy", "num_slides")})
        ci_file = Path(run.out) / "test" / "metrics.json"
        if ci_file.is_file():
            record["ci95"] = json.loads(ci_file.read_text()).get("ci95")
        folds.append(record)
    summary: dict[str, Any] = {"folds": folds}
    for name in (*METRICS, "accuracy"):
        values = [f[name] for f in folds if f.get(name) is not None]
        summary[name] = (
            {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            }
            if values
            else None
        )
    return summary


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """cv_summary.json and cv_summary.csv (a row per fold, then mean and std)."""
    atomic_write_text(out / "cv_summary.json", json.dumps(summary, indent=2) + "\n")
    table = io.StringIO(newline="")
    writer = csv.writer(table, lineterminator="\n")
    names = (*METRICS, "accuracy")
    writer.writerow(["fold", *names, "num_slides"])
    for fold in summary["folds"]:
        writer.writerow(
            [fold["fold"], *(_number(fold.get(n)) for n in names), fold.get("num_slides")]
        )
    for statistic in ("mean", "std"):
        writer.writerow(
            [statistic, *(_number(summary[n][statistic]) if summary[n] else "" for n in names), ""]
        )
    atomic_write_text(out / "cv_summary.csv", table.getvalue())


def format_summary(summary: dict[str, Any]) -> str:
    """'AUC 0.912 +- 0.031, ...' over the folds, for the terminal."""
    parts = []
    for name in (*METRICS, "accuracy"):
        value = summary.get(name)
        if value:
            parts.append(f"{name.replace('_', ' ')} {value['mean']:.4f} +- {value['std']:.4f}")
    return ", ".join(parts)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.6f}"


def evaluate_mil(
    model: MILModel,
    rows: Sequence[SlideRow],
    out: Path,
    *,
    bootstrap: int = 1000,
    device: str | None = None,
    title: str = "slide-level evaluation",
) -> EvalResult:
    """A saved model on the slide table's ``rows``: metrics.json (with bootstrap intervals),
    predictions.csv and the confusion matrix in ``out``."""
    unknown = sorted({label for row in rows for label in row.labels} - set(model.labels))
    if unknown:
        raise TrainingError(
            f"label(s) {', '.join(unknown)} are not among the model's ({', '.join(model.labels)})"
        )
    samples = bag_samples(rows, model.labels, model.multi_label)
    for sample in samples[:1]:  # one encoder made them all (vitkit.slides.mil_inputs checks)
        if bag_dim(sample.embeddings) != model.config.input_dim:
            raise TrainingError(
                f"{sample.embeddings}: {bag_dim(sample.embeddings)}-d tile embeddings, the model "
                f"takes {model.config.input_dim}-d: embed with "
                f"{model.encoder.get('model', 'its training encoder')}"
            )
    dataset = BagDataset(samples, multi_label=model.multi_label)
    evaluator = MILEvaluator(model.labels, multi_label=model.multi_label, bootstrap=bootstrap)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = model.network.to(target)
    result = evaluate(network, dataset, evaluator, device=target, batch_size=1)
    evaluator.write(result, out, title)
    return result
