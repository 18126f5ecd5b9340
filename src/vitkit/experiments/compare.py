"""One table, one data set, one test split: CNN baseline vs ViT from scratch vs fine-tuned vs distilled.

Rows (``--rows``, in this order; each is a full ``vitkit.training.trainer`` run in ``OUT/rows/<row>/``):

- ``baseline``     torchvision ResNet (18 by default; 50 for GPU-sized runs), from scratch or from
                   ``--baseline-weights`` (torchvision file or HF ``microsoft/resnet-50`` directory);
- ``scratch``      the ViT, randomly initialised;
- ``finetune224``  the ViT fine-tuned from a pre-trained checkpoint at the base resolution;
- ``finetune384``  the same checkpoint fine-tuned at the higher resolution (position embeddings
                   resampled), 384/224 of the base resolution by default;
- ``distilled``    a DeiT student of the scratch ViT's size, trained with the baseline as teacher.

Data: class folders (``train/`` and ``test/``, one sub-folder per class: single-label rows, the
table's columns accuracy / macro F1 / precision / recall) or label tables (a folder with
``train.csv`` and ``test.csv``, ``val.csv`` optional: ``vitkit.training.labels``; every row trains
multi-label, ``vitkit.training.tasks.multilabel``, and the columns become mAP / macro-F1 /
micro-F1 / ROC-AUC at the thresholds each model tuned on validation). Every row works on both:
the ResNet's config carries ``problem_type`` and thresholds as the ViT's does, and the distilled
row's teacher terms become per-label sigmoid ones (``vitkit.training.tasks.distill``). Images with
masks (``DATA/{train,test}/{images,masks}/`` + ``labels.json``: ``vitkit.training.seg_data``) make
a segmentation comparison: the baseline row is segmentation_models_pytorch's U-Net (ResNet-18
encoder, from scratch), the ViT rows carry a DPT head, the columns are mIoU / Dice / pixel
accuracy over every labelled test pixel, and there is no distilled row.

The row names keep the paper's resolutions; the table shows the sizes actually used (CPU-sized
defaults train 16x16 and 28x28 inputs: the digits are 8x8). Fine-tune rows need a pre-trained ViT. With
``--pretrained PATH`` that checkpoint is used. Without one (no network here, so no published
checkpoint), compare pre-trains one itself, in the same run, on the training images only, labels
unused: a masked autoencoder (MAE, He et al. 2021; ``vitkit.training.tasks.mae``) of the rows'
ViT, whose encoder the fine-tune rows start from. The table's notes and titles say which it was.

Rows run in the order baseline, scratch, distilled (the baseline is its teacher), then the
MAE pre-training and the fine-tune rows; the table keeps the order above and is rewritten
after every row. Resumable: a finished row leaves ``rows/<row>/result.json`` and is reused; an unfinished one
continues from its ``last.pt`` (the trainer's ``--resume``). Outputs in ``OUT``: ``table.md``,
``table.csv``, ``metrics.png`` (grouped bars), ``confusion/<row>.png`` (single-label data),
``compare.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import platform
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.atomic_files import atomic_write_bytes, atomic_write_text
from vitkit.checkpoints.hub import source_kind
from vitkit.errors import CompareError
from vitkit.experiments.compare_config import ROWS, CompareConfig
from vitkit.training.checks import check_image_size, check_settings
from vitkit.training.config import TrainConfig
from vitkit.training.labels import find_table, is_label_table
from vitkit.training.model_spec import ModelFactory
from vitkit.training.seg_config import SegmentationSettings
from vitkit.training.seg_data import is_mask_dataset
from vitkit.training.seg_specs import unet_spec
from vitkit.training.specs import preset_config, resnet_model_spec, vit_model_spec
from vitkit.training.state import load_state
from vitkit.training.task_builder import TaskBuilder
from vitkit.training.tasks.classify import ClassificationBuilder
from vitkit.training.tasks.distill import DistillationBuilder
from vitkit.training.tasks.distill_collapse import MIN_COLLAPSE_SUPPORT, collapse_report
from vitkit.training.tasks.mae import MAEBuilder
from vitkit.training.tasks.mae_config import PretrainConfig
from vitkit.training.tasks.multilabel import MultiLabelBuilder
from vitkit.training.tasks.segment import SegmentationBuilder
from vitkit.training.tracking import run_group
from vitkit.training.trainer import TrainResult, train

__all__ = ["ROWS", "CompareConfig", "CompareError", "check_compare", "compare", "run_row"]

RUN_ORDER = ("baseline", "scratch", "distilled", "finetune224", "finetune384")
OUTPUT_FILES = ("table.md", "table.csv", "metrics.png", "compare.json")  # in OUT


@dataclass(frozen=True)
class Scores:
    """The table's metric columns (report keys and titles) for one kind of data."""

    task: str
    metrics: tuple[str, ...]
    titles: tuple[str, ...]
    about: str  # what the numbers are, for the table's notes


SINGLE_LABEL = Scores(
    "single-label",
    ("accuracy", "macro_f1", "macro_precision", "macro_recall"),
    ("Accuracy", "F1", "Precision", "Recall"),
    "metrics are macro averages over classes on the test split",
)
MULTI_LABEL = Scores(
    "multi-label",
    ("mAP", "macro_f1", "micro_f1", "roc_auc"),
    ("mAP", "macro-F1", "micro-F1", "ROC-AUC"),
    "multi-label metrics on the test split: mAP (average precision, macro over labels), macro- "
    "and micro-F1 at each model's own per-label thresholds (tuned on validation for max F1 and "
    "saved with it), macro ROC-AUC",
)
SEGMENTATION = Scores(
    "segmentation",
    ("mean_iou", "mean_dice", "pixel_accuracy"),
    ("mIoU", "Dice", "Pixel accuracy"),
    "per-pixel metrics over every labelled pixel of the test split (mIoU and Dice: means over "
    "the classes present)",
)
MAE_DECODER_DEPTH = 2  # a light decoder for the CPU-sized rows (the paper's is 8 x 512)
# CompareConfig's settings that every row's TrainConfig takes as they are (same names).
SHARED_SETTINGS = tuple(
    f.name for f in dataclasses.fields(CompareConfig) if f.name in TrainConfig.__dataclass_fields__
)


@dataclass
class RowResult:
    row: str
    title: str
    report: dict[str, Any] | None
    run_dir: str
    best_epoch: int | None
    epochs: int
    parameters: int
    image_size: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    cpu_seconds: float | None = None  # CPU time (all threads) of the process that trained it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- one row = one training run ---------------------------------------------------------
def is_multilabel(cfg: CompareConfig) -> bool:
    """Label tables (multi-label rows), not class folders."""
    return is_label_table(cfg.data)


def is_segmentation(cfg: CompareConfig) -> bool:
    """Images with masks, not class folders."""
    return is_mask_dataset(cfg.data)


def scores_for(cfg: CompareConfig) -> Scores:
    if is_segmentation(cfg):
        return SEGMENTATION
    return MULTI_LABEL if is_multilabel(cfg) else SINGLE_LABEL


def task_for(cfg: CompareConfig, factory: ModelFactory = vit_model_spec) -> TaskBuilder:
    """What a row learns with the network ``factory`` makes: single-label classification of
    class folders, multi-label classification of label tables, or segmentation of images with
    masks (there the baseline's CNN is a U-Net and the ViT carries a DPT head)."""
    if is_segmentation(cfg):
        if factory is vit_model_spec:
            return SegmentationBuilder(SegmentationSettings(seg_head="dpt"))
        return SegmentationBuilder(model_factory=unet_spec("resnet18", cfg.image_size or 224))
    if is_multilabel(cfg):
        return MultiLabelBuilder(factory)
    return ClassificationBuilder(factory)


def _train_config(cfg: CompareConfig, row_dir: Path, **changes: Any) -> TrainConfig:
    shared = {name: getattr(cfg, name) for name in SHARED_SETTINGS if name not in ("data", "out")}
    # resume: a killed compare continues each row where it stopped; only the distilled row mixes
    settings = {"data": cfg.data, "out": str(row_dir), **shared, "resume": True, "mix": "none"}
    settings.update(changes)
    return TrainConfig(**settings)


def run_row(cfg: CompareConfig, row: str, pretrained: str | None) -> RowResult:
    """Train and test one row (resuming its run folder); return its test metrics."""
    row_dir = Path(cfg.out) / "rows" / row
    started = time.perf_counter()
    cpu_started = time.process_time()
    notes: list[str] = []
    size = cfg.image_size
    overrides = dict(cfg.vit_overrides)
    if row == "baseline":
        title = f"{cfg.baseline_arch} (CNN baseline)"
        if is_segmentation(cfg):
            title = "U-Net, ResNet-18 encoder (CNN baseline)"
        factory = resnet_model_spec(cfg.baseline_arch, cfg.baseline_weights)
        result = train(_train_config(cfg, row_dir, epochs=cfg.cnn_epochs), task_for(cfg, factory))
        if cfg.baseline_weights:
            notes.append(f"initialised from {cfg.baseline_weights}")
    elif row == "scratch":
        title = "ViT from scratch"
        train_cfg = _train_config(
            cfg,
            row_dir,
            from_scratch=True,
            preset=cfg.vit_preset,
            model_overrides=overrides,
            patch_embed=cfg.vit_patch_embed,
        )
        result = train(train_cfg, task_for(cfg))
    elif row in ("finetune224", "finetune384"):
        assert pretrained is not None
        size = cfg.image_size if row == "finetune224" else cfg.high_size
        title = f"ViT fine-tuned @{size}" + ("" if cfg.pretrained else " from the MAE pre-training")
        result = train(
            _train_config(cfg, row_dir, model=pretrained, image_size=size), task_for(cfg)
        )
    elif row == "distilled":
        title = f"ViT distilled ({cfg.distill_kind}, teacher {cfg.baseline_arch})"
        result = _distilled_row(cfg, row_dir, notes)
    else:  # pragma: no cover - __post_init__ rejects unknown rows
        raise CompareError(f"unknown row {row}")
    row_result = _row_result(
        cfg, row, title, result, row_dir, size, time.perf_counter() - started, notes
    )
    row_result.cpu_seconds = round(time.process_time() - cpu_started, 1)
    return row_result


def _distilled_row(cfg: CompareConfig, row_dir: Path, notes: list[str]) -> TrainResult:
    """The ViT student taught by the baseline row's model (a collapse is noted, not raised)."""
    teacher = Path(cfg.out) / "rows" / "baseline" / "best"
    if not teacher.is_dir():
        raise CompareError(
            f"the distilled row needs the baseline's model at {teacher}: include the baseline row"
        )
    train_cfg = _train_config(
        cfg, row_dir, from_scratch=True, mix=cfg.distill_mix, mix_alpha=cfg.distill_mix_alpha
    )
    builder = DistillationBuilder(
        teacher,
        cfg.vit_preset,
        kind=cfg.distill_kind,  # type: ignore[arg-type]  # checked by its choices
        alpha=cfg.distill_alpha,
        temperature=cfg.distill_temperature,
        overrides=dict(cfg.vit_overrides),
        raise_on_collapse=False,  # the table reports it; the other rows still count
    )
    result = train(train_cfg, builder)
    if result.best_epoch is None:
        notes.append(
            "COLLAPSED in every epoch (a class never predicted on validation): no model kept"
        )
    return result


def _row_result(
    cfg: CompareConfig,
    row: str,
    title: str,
    result: TrainResult,
    row_dir: Path,
    size: int,
    seconds: float,
    notes: list[str],
) -> RowResult:
    report = result.test.report if result.test is not None else None
    if report is None:
        if not notes:
            notes.append("no epoch was kept as best: no test result")
    else:
        warning = _test_warning(report)
        if warning is not None:
            notes.append(warning)
            _say(f"WARNING: row {row}: {warning}")
    parameters = _count_parameters(row_dir / "last.pt")
    # Training time from the epoch records: correct across a kill and resume as well.
    epoch_seconds = [r["seconds"] for r in result.history if r.get("type") == "epoch"]
    seconds = sum(epoch_seconds) if epoch_seconds else seconds
    epochs = max((r["epoch"] for r in result.history if r.get("type") == "epoch"), default=0)
    return RowResult(
        row,
        title,
        report,
        str(row_dir),
        result.best_epoch,
        epochs,
        parameters,
        size,
        round(seconds, 1),
        notes,
    )


def _test_warning(report: dict[str, Any]) -> str | None:
    """A collapse on the test split (single-label: a class never predicted), or labels a
    multi-label model never finds there (each with enough test images to tell)."""
    if "confusion_matrix" in report:
        collapse = collapse_report(report["confusion_matrix"], report["labels"])
        return collapse.message("test") if collapse.collapsed else None
    missed = [
        label
        for label, scores in report["per_class"].items()
        if scores["recall"] == 0 and scores["support"] >= MIN_COLLAPSE_SUPPORT
    ]
    if not missed:
        return None
    return f"never finds {', '.join(missed)} on the test split (no image passes the threshold)"


def _count_parameters(last_checkpoint: Path) -> int:
    state = load_state(last_checkpoint)["model"]
    return int(
        sum(
            v.numel()
            for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
    )


# ---- the pre-training: MAE on the training images ----------------------------------------
def pretrain(cfg: CompareConfig) -> tuple[str, str]:
    """(checkpoint path, note): ``--pretrained`` as given, or the encoder of a ViT of the rows'
    size pre-trained here as a masked autoencoder on ``DATA/train`` (labels unused; the test
    split is never seen)."""
    if cfg.pretrained:
        return cfg.pretrained, f"fine-tune rows start from {cfg.pretrained}"
    run_dir = Path(cfg.out) / "rows" / "pretrain"
    best = run_dir / "best"
    encoder = preset_config(cfg.vit_preset, cfg.vit_overrides, cfg.image_size)
    settings = PretrainConfig(
        decoder_depth=MAE_DECODER_DEPTH, decoder_width=encoder.hidden_size, pictures=4
    )
    note = (
        "no pre-trained ViT was given (--pretrained) and none can be downloaded here, so the "
        "fine-tune rows start from the encoder of a ViT of the same size pre-trained in this run "
        f"as a masked autoencoder (MAE: {settings.mask_ratio:.0%} of the patches hidden, a "
        f"{MAE_DECODER_DEPTH}-block decoder reconstructs them) for {cfg.pretrain_epochs} epochs "
        "on the training images, their labels unused"
    )
    if (run_dir / "result.json").exists() and best.is_dir():
        return str(best), note
    _say("compare: MAE pre-training on the training images (no --pretrained given)")
    train_cfg = _train_config(
        cfg,
        run_dir,
        data=str(_training_images(cfg)),
        preset=cfg.vit_preset,
        model_overrides=dict(cfg.vit_overrides),
        epochs=cfg.pretrain_epochs,
    )
    result = train(train_cfg, MAEBuilder(settings))
    if result.best_epoch is None:
        raise CompareError(f"pre-training in {run_dir} kept no model")
    atomic_write_text(run_dir / "result.json", json.dumps({"best_epoch": result.best_epoch}) + "\n")
    return str(best), note


def _training_images(cfg: CompareConfig) -> Path:
    """What the MAE reads: DATA/train (class folders) or the training table (its images)."""
    if is_multilabel(cfg):
        table = find_table(Path(cfg.data), "train")
        assert table is not None, "_check_data first"
        return table
    if is_segmentation(cfg):
        return Path(cfg.data) / "train" / "images"
    return Path(cfg.data) / "train"


# ---- the whole comparison ---------------------------------------------------------------
def _check_settings(cfg: CompareConfig, out: Path) -> None:
    path = out / "compare_config.json"
    settings = cfg.settings()
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(
            k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k)
        )
        if changed:
            raise CompareError(
                f"{out} holds a comparison run with other settings ({', '.join(changed)}); "
                "use another --out, or delete that folder to start over"
            )
    else:
        atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _check_data(cfg: CompareConfig) -> None:
    root = Path(cfg.data)
    if is_segmentation(cfg):
        if not (root / "train" / "images").is_dir() or not (root / "test" / "images").is_dir():
            raise CompareError(
                f"{root}: a segmentation comparison needs train/ and test/, each with images/ "
                "and masks/, so every row is tested on the same masks"
            )
        if "distilled" in cfg.rows:
            raise CompareError(
                "--rows distilled: distillation is for classifiers; segmentation compares "
                "baseline (U-Net), scratch and finetune rows"
            )
        return
    if is_label_table(root):
        if root.is_dir() and find_table(root, "test") is not None:
            return
        raise CompareError(
            f"{root}: compare on label tables needs a folder with train.csv and test.csv (or "
            ".jsonl; val.csv optional) so every row is tested on the same images "
            "(vitkit.experiments.mosaics.build_mosaics writes one)"
        )
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise CompareError(
            f"{root}: compare needs train/ and test/ class folders (or a folder of label tables: "
            "train.csv and test.csv) so every row is tested on the same images (e.g. "
            "`vitkit compare --demo-data digits` builds one)"
        )


def check_compare(cfg: CompareConfig) -> None:
    """Refuse settings no row can train with, before the first row (or the demo data) starts."""
    if "distilled" in cfg.rows and not 0 <= cfg.distill_alpha <= 1:
        raise CompareError(f"--distill-alpha {cfg.distill_alpha}: use a weight in [0, 1]")
    if "distilled" in cfg.rows and cfg.distill_temperature <= 0:
        raise CompareError(f"--distill-temperature {cfg.distill_temperature}: use a value > 0")
    if "distilled" in cfg.rows and cfg.distill_mix_alpha <= 0:
        raise CompareError(f"--distill-mix-alpha {cfg.distill_mix_alpha}: use a value > 0")
    check_settings(_train_config(cfg, Path(cfg.out)), check_data=False)  # ranges, device
    if any(row != "baseline" for row in cfg.rows):
        vit = preset_config(cfg.vit_preset, cfg.vit_overrides, cfg.image_size)
        check_image_size(vit.image_hw, vit.patch_size, f"--vit-preset {cfg.vit_preset}")
        if "finetune384" in cfg.rows:
            size = (cfg.high_size, cfg.high_size)
            check_image_size(
                size, vit.patch_size, f"--vit-preset {cfg.vit_preset} (--high-image-size)"
            )
    for option, source in (
        ("--pretrained", cfg.pretrained),
        ("--baseline-weights", cfg.baseline_weights),
    ):
        if source is not None and source_kind(source) is None:
            raise CompareError(f"{option} {source}: no such file or directory")


def compare(cfg: CompareConfig) -> list[RowResult]:
    """Run (or reuse) every row, then write the table, chart and confusion matrices; with
    ``--report-to mlflow`` every row trained is a run nested under one run of the comparison,
    which gets the table files."""
    check_compare(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_data(cfg)
    _check_settings(cfg, out)
    with run_group(cfg.report_to, out, f"compare {out.absolute().name}", cfg.experiment) as group:
        results = _compare_rows(dataclasses.replace(cfg, parent_run=group.run_id))
        group.log_files([out / name for name in OUTPUT_FILES])
    return results


def _compare_rows(cfg: CompareConfig) -> list[RowResult]:
    out = Path(cfg.out)
    if "distilled" in cfg.rows and "baseline" not in cfg.rows:
        cfg.rows = ["baseline", *cfg.rows]
        cfg.__post_init__()
    pretrained, pretrain_note = (None, "")
    done: dict[str, RowResult] = {}
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    trained: list[str] = []
    # Run order: the teacher, then the rows that need no pre-training, the fine-tune rows last.
    order = sorted(cfg.rows, key=RUN_ORDER.index)
    for number, row in enumerate(order, start=1):
        marker = out / "rows" / row / "result.json"
        if row.startswith("finetune") and pretrained is None:
            if not cfg.pretrained and not (out / "rows" / "pretrain" / "result.json").exists():
                trained.append("pretrain (MAE)")
            pretrained, pretrain_note = pretrain(cfg)
        if marker.exists():
            _say(
                f"compare [{number}/{len(order)}] {row}: finished earlier, reusing {marker.parent}"
            )
            done[row] = RowResult(**json.loads(marker.read_text()))
        else:
            _say(f"compare [{number}/{len(order)}] {row}: training in {marker.parent}")
            done[row] = run_row(cfg, row, pretrained)
            trained.append(row)
            atomic_write_text(marker, json.dumps(done[row].to_dict(), indent=2) + "\n")
            # The table so far: a killed compare still leaves the finished rows' numbers.
            results = [done[r] for r in cfg.rows if r in done]
            write_outputs(cfg, results, pretrain_note)
    timing = _invocation_note(trained, time.perf_counter() - wall_started, cpu_started)
    _say(f"compare: {timing}")
    write_outputs(cfg, [done[r] for r in cfg.rows], pretrain_note, timing)
    return [done[r] for r in cfg.rows]


def _invocation_note(trained: list[str], wall: float, cpu_started: float) -> str:
    """Wall and CPU time of this command (rows reused from an earlier one cost nothing here)."""
    cpu = time.process_time() - cpu_started
    rows = ", ".join(trained) if trained else "none (all reused)"
    return (
        f"This command: {wall:.0f}s wall ({wall / 60:.1f} min), {cpu:.0f}s CPU, all threads "
        f"({cpu / 60:.1f} min) on "
        f"{torch.get_num_threads()} torch threads; trained here: {rows}"
    )


# ---- outputs ----------------------------------------------------------------------------
def table_rows(results: list[RowResult], scores: Scores = SINGLE_LABEL) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        report = result.report or {}
        rows.append(
            {
                "row": result.row,
                "model": result.title,
                "image_size": result.image_size,
                "parameters": result.parameters,
                "best_epoch": result.best_epoch,
                "epochs": result.epochs,
                **{metric: report.get(metric) for metric in scores.metrics},
                "train_seconds": result.seconds,
                "cpu_seconds": result.cpu_seconds,
                "notes": "; ".join(result.notes),
            }
        )
    return rows


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt_time(row: dict[str, Any]) -> str:
    cpu = row["cpu_seconds"]
    return f"{row['train_seconds']:.0f}s / " + ("n/a" if cpu is None else f"{cpu:.0f}s")


def markdown_table(
    results: list[RowResult], notes: list[str], scores: Scores = SINGLE_LABEL
) -> str:
    columns = ["Model", "Input", "Params", *scores.titles, "Best epoch", "Train time (wall / CPU)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table_rows(results, scores):
        lines.append(
            f"| {row['model']} | {row['image_size']}x{row['image_size']} | {row['parameters'] / 1e6:.2f}M | "
            + " | ".join(_fmt(row[m]) for m in scores.metrics)
            + f" | {row['best_epoch']}/{row['epochs']} | {_fmt_time(row)} |"
        )
    row_notes = [f"{r.title}: {'; '.join(r.notes)}" for r in results if r.notes]
    all_notes = [*notes, *row_notes]
    if all_notes:
        lines.append("")
        lines.extend(f"- {note}" for note in all_notes)
    return "\n".join(lines) + "\n"


def write_outputs(
    cfg: CompareConfig, results: list[RowResult], pretrain_note: str, timing: str = ""
) -> None:
    out = Path(cfg.out)
    scores = scores_for(cfg)
    notes = [
        f"Data: {cfg.data} (the same train/validation/test split for every row); {scores.about}, "
        "from the epoch with the lowest validation loss",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; {cfg.epochs} epochs per ViT row, "
        f"{cfg.cnn_epochs} for the CNN, batch {cfg.batch_size}, "
        f"{cfg.optimizer} lr {cfg.lr}, augment {cfg.augment} (every row)",
        f"Distilled row: {cfg.distill_kind} distillation"
        + (f" at T={cfg.distill_temperature:g}" if cfg.distill_kind == "soft" else "")
        + (" (one sigmoid per label: BCE terms)" if scores is MULTI_LABEL else "")
        + f", alpha {cfg.distill_alpha:g} (weight of the teacher term), teacher = the CNN row"
        + (
            f"; every batch mixed ({cfg.distill_mix}, alpha {cfg.distill_mix_alpha:g}) and the "
            "teacher labels the mixed images (function matching)"
            if cfg.distill_mix != "none"
            else ""
        ),
    ]
    if pretrain_note:
        notes.append(pretrain_note)
    if timing:
        notes.append(timing)
    rows = table_rows(results, scores)
    atomic_write_text(out / "table.md", markdown_table(results, notes, scores))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["row"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "table.csv", table.getvalue())
    atomic_write_text(
        out / "compare.json",
        json.dumps(
            {
                "settings": cfg.settings(),
                "task": scores.task,
                "metrics": list(scores.metrics),
                "notes": notes,
                "rows": [r.to_dict() for r in results],
            },
            indent=2,
        )
        + "\n",
    )
    plot_metrics(results, out / "metrics.png", scores)
    confusion_dir = out / "confusion"
    confusion_dir.mkdir(exist_ok=True)
    for result in results:
        source = Path(result.run_dir) / "test" / "confusion_matrix.png"
        if source.exists():
            atomic_write_bytes(confusion_dir / f"{result.row}.png", source.read_bytes())


def plot_metrics(results: list[RowResult], path: Path, scores: Scores = SINGLE_LABEL) -> Path:
    """Horizontal grouped bars: one group per row (its name wrapped on the left), one bar per
    metric, each labelled with three decimals. The score axis spans the data, not 0-1: rows
    that differ by 0.03 macro-F1 must look different. The legend sits outside the bars."""
    # matplotlib (~0.3 s to import) only when a chart is drawn

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.array(
        [[(r.report or {}).get(metric) or 0.0 for metric in scores.metrics] for r in results]
    )
    metrics = len(scores.metrics)
    figure = Figure(figsize=(8.0, 1.0 + len(results) * (0.22 * metrics + 0.35)), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    height = 0.8 / metrics
    positions = np.arange(len(results))[::-1]  # the table's first row on top
    for index, title in enumerate(scores.titles):
        offsets = positions + ((metrics - 1) / 2 - index) * height
        bars = axes.barh(offsets, values[:, index], height, label=title)
        axes.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    names = [textwrap.fill(r.title, 26) for r in results]
    axes.set_yticks(positions, names, fontsize=8)
    low, high = _score_axis(values)
    axes.set_xlim(low, high)
    axes.set_xlabel(f"{scores.task} score on the test split (axis from {low:.2f})")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _score_axis(values: np.ndarray) -> tuple[float, float]:
    """A score axis that spans the data (rounded out to 0.05) and leaves room for the labels."""
    low = max(0.0, np.floor((float(values.min()) - 0.02) * 20) / 20)
    top = float(values.max())
    return low, top + max(0.02, (top - low) * 0.12)
