"""`vitkit mil train|eval|predict`: slide-level models learned from slide labels alone."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.slides.settings import SlideSettings
from vitkit.training.config import TrainConfig
from vitkit.training.tasks.mil_config import (
    MIL_LR,
    MILModelSettings,
    MILPredictSettings,
    MILSettings,
)

# The TrainConfig fields that mean something for a slide-level run.
TRAIN_OPTIONS = (
    "data",
    "out",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "warmup_fraction",
    "warmup_steps",
    "clip_grad_norm",
    "val_fraction",
    "balance",
    "workers",
    "seed",
    "device",
    "resume",
    "log_every",
    "progress",
    "report_to",
    "experiment",
    "run_name",
)
# Gradients are not clipped: one bag per step, and clipping the steps of the bags with large
# gradients (often the few positive ones) down to the others' slowed or stopped learning on
# MNIST-bags (benchmarks/bench_mil_bags.py).
TRAIN_DEFAULTS = {"epochs": 20, "batch_size": 1, "clip_grad_norm": 0.0}
OWN_HELP = {
    "data": "slide table (CSV or Parquet): a row per slide with its id or path and label; "
    "optional patient, split (train/val/test) and embeddings columns",
    "batch_size": "slides per optimiser step (one bag per forward; their gradients add up)",
    "optimizer": "sgd or adamw",
    "lr": f"peak learning rate (default {MIL_LR:g}, Ilse et al. 2018)",
    "weight_decay": "decoupled weight decay (default 1e-4 with adamw)",
    "warmup_fraction": "share of the steps for the linear warm-up (default 0.05)",
    "val_fraction": "share of the training patients held out for validation (per-epoch metrics; "
    "the best epoch with --best-epoch val-loss)",
    "balance": "class balance: auto = class weights in the loss when class counts differ",
    "workers": "data-loading processes (default 0: bags read in this process)",
}
TILING_OPTIONS = ("level", "mpp", "tile_size", "stride", "min_tissue", "reader", "pool")
SLIDE_TABLE_OPTIONS = (
    "embeddings",
    "encoder",
    "slide_column",
    "label_column",
    "patient_column",
    "split_column",
)

EPILOG = """\
examples:
  # tile embeddings first (any encoder vitkit loads), then a gated-attention model
  vitkit slide slides/*.svs --model UNI-dir --embed --mpp 0.5 --out emb/
  vitkit mil train --data slides.csv --embeddings emb/ --out runs/abmil
  # slides listed but not embedded yet are embedded first (resumable)
  vitkit mil train --data slides.csv --embeddings emb/ --encoder UNI-dir --out runs/abmil
  # 5-fold cross-validation by patient, CLAM-SB, bags sampled to 4,096 tiles in training
  vitkit mil train --data slides.csv --embeddings emb/ --out runs/clam --mil-model clam_sb \\
      --folds 5 --max-tiles 4096
  vitkit mil eval --model runs/abmil/best --data external.csv --embeddings emb2/ --out ev/
  # a new slide from its file alone (embedded as the training slides were)
  vitkit mil predict new.svs --model runs/abmil/best --out pred/

Splits are by patient: a patient's slides never straddle train/val/test. OUT gets best/ (the
model, naming its tile encoder and tiling), last.pt (--resume), split.json, metrics.csv,
curves.png and test/ (metrics.json with AUC, balanced accuracy, macro-F1 and bootstrap 95%
intervals, predictions.csv); with --folds, fold-<i>/ each and cv_summary.json/.csv (per fold,
mean and std). predict writes, per slide: prediction.json, tiles.parquet/.csv with each tile's
attention, attention.geojson (QuPath measurements), heatmap-attention.png and gallery.png.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mil",
        help="slide-level models from slide labels (attention MIL on tile embeddings)",
        description="Multiple-instance learning on the tile embeddings of `vitkit slide --embed`: "
        "mean/max pooling, gated attention (ABMIL), CLAM-SB, TransMIL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="mil_command", metavar="train|eval|predict")
    train = commands.add_parser(
        "train",
        help="train on a slide table",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(train, TrainConfig, only=TRAIN_OPTIONS, defaults=TRAIN_DEFAULTS, helps=OWN_HELP)
    add_options(train, MILSettings)
    # how slides embedded now are tiled (those embedded already keep theirs)
    add_options(train, SlideSettings, only=TILING_OPTIONS)
    train.set_defaults(func=run_train, refuse=train.error)
    evaluate = commands.add_parser("eval", help="a saved model on a slide table")
    add_options(evaluate, TrainConfig, only=("data",), helps=OWN_HELP)
    add_options(evaluate, MILModelSettings)
    add_options(evaluate, MILSettings, only=(*SLIDE_TABLE_OPTIONS, "bootstrap"))
    evaluate.set_defaults(func=run_eval, refuse=evaluate.error)
    predict = commands.add_parser("predict", help="new slides (files or embedding folders)")
    predict.add_argument(
        "inputs", nargs="+", type=Path, help="slide files or `vitkit slide --embed` folders"
    )
    add_options(predict, MILModelSettings, exclude=("split",))
    add_options(predict, MILPredictSettings)
    predict.set_defaults(func=run_predict)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_train(args: argparse.Namespace) -> int:
    from vitkit.slides.mil_inputs import embed_rows
    from vitkit.training.distributed import cleanup_distributed
    from vitkit.training.mil_train import format_summary, train_mil
    from vitkit.training.tasks.mil_data import read_slide_table

    cfg = config_from_args(TrainConfig, args)
    settings = config_from_args(MILSettings, args)
    _check(settings, args)
    table = Path(cfg.data)
    rows = read_slide_table(table, settings)
    # SlideSettings' batch size and workers are not options here (train's are other things)
    tiles = config_from_args(
        SlideSettings, args, batch_size=SlideSettings.batch_size, workers=SlideSettings.workers
    )
    with tile_progress(cfg.progress) as progress:
        embedded = embed_rows(
            rows, settings, table, device=cfg.device, tiles=tiles, report=_say, progress=progress
        )
    try:
        result = train_mil(
            cfg, settings, embedded.rows, encoder=embedded.encoder, tiling=embedded.tiling
        )
    finally:
        cleanup_distributed()
    if settings.folds > 1:
        print(
            f"{settings.folds}-fold cross-validation by patient: {format_summary(result.summary)}"
        )
        print(f"per fold: {result.out / 'cv_summary.csv'}")
        return 0
    run = result.runs[0]
    if run.test is not None:
        report = run.test.report
        print(
            f"test: AUC {_value(report.get('auc'))}, balanced accuracy {_value(report['balanced_accuracy'])}, macro-F1 {_value(report['macro_f1'])} ({result.out / 'test' / 'metrics.json'})"
        )
    print(
        f"best epoch {run.best_epoch}: {result.out / 'best'}\npredict a slide: vitkit mil predict SLIDE --model {result.out / 'best'} --out PRED"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from vitkit.checkpoints.mil import load_mil
    from vitkit.slides.mil_inputs import embed_rows, slide_settings
    from vitkit.training.mil_train import evaluate_mil
    from vitkit.training.tasks.mil_data import read_slide_table

    chosen = config_from_args(MILModelSettings, args)
    model = load_mil(chosen.model)
    table_settings = config_from_args(MILSettings, args, multi_label=model.multi_label)
    if table_settings.encoder is None and model.encoder.get("model"):
        table_settings.encoder = model.encoder["model"]
    table = Path(args.data)
    rows = read_slide_table(table, table_settings)
    if chosen.split is not None:
        rows = [row for row in rows if row.split == chosen.split]
        if not rows:
            args.refuse(f"--split {chosen.split}: no row of {table} has it")
    # slides not embedded yet are embedded as the model's training slides were
    tiles = slide_settings(model.encoder, model.tiling) if model.tiling else None
    with tile_progress(True) as progress:
        embedded = embed_rows(
            rows,
            table_settings,
            table,
            device=chosen.device,
            tiles=tiles,
            report=_say,
            progress=progress,
        )
    result = evaluate_mil(
        model,
        embedded.rows,
        Path(chosen.out),
        bootstrap=table_settings.bootstrap,
        device=chosen.device,
    )
    report = result.report
    print(
        f"{len(embedded.rows)} slides: AUC {_value(report.get('auc'))}, balanced accuracy {_value(report['balanced_accuracy'])}, macro-F1 {_value(report['macro_f1'])} -> {chosen.out}"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from vitkit.checkpoints.mil import load_mil
    from vitkit.errors import VitkitError
    from vitkit.slides.mil_predict import EncoderCache, predict_slide

    chosen = config_from_args(MILModelSettings, args)
    outputs = config_from_args(MILPredictSettings, args)
    model = load_mil(chosen.model)
    encoder = EncoderCache(model, chosen.device)
    out = Path(chosen.out)
    lines, failures = [], 0
    for source in args.inputs:
        try:
            with tile_progress(True) as progress:
                prediction = predict_slide(
                    model, source, out, outputs, encoder=encoder, progress=progress
                )
        except VitkitError as error:
            _say(f"{error}")
            failures += 1
            continue
        scores = ", ".join(f"{k} {v:.3f}" for k, v in prediction.probabilities.items())
        _say(f"{source}: {';'.join(prediction.predicted)} ({scores}) -> {prediction.out_dir}")
        lines.append(
            [str(source), ";".join(prediction.predicted), *prediction.probabilities.values()]
        )
    if lines:
        _write_predictions(out, model.labels, lines)
    print(f"{len(lines)} of {len(args.inputs)} slides predicted -> {out / 'predictions.csv'}")
    return 1 if failures else 0


def _write_predictions(out: Path, labels: list[str], lines: list[list[Any]]) -> None:

    from vitkit.atomic_files import atomic_write_text

    table = io.StringIO(newline="")
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["slide", "predicted", *(f"prob_{label}" for label in labels)])
    writer.writerows(lines)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.csv", table.getvalue())


@contextmanager
def tile_progress(enabled: bool) -> Iterator[Callable[[Path], Callable[[int, int], None]]]:
    """A rich bar on stderr per slide embedded (tiles, ETA); nothing when no slide is."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bars = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not enabled,
    )

    def for_slide(slide: Path) -> Callable[[int, int], None]:
        task = bars.add_task(f"embedding {slide.name}", total=None)
        return lambda done, total: bars.update(task, completed=done, total=total)

    with bars:
        yield for_slide


def _check(settings: MILSettings, args: argparse.Namespace) -> None:
    """Impossible settings are refused before any work (argparse's exit 2, one line)."""
    try:
        settings.check()
    except ValueError as error:
        args.refuse(str(error))


def _value(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _say(message: str) -> None:
    print(f"vitkit mil: {message}", file=sys.stderr)
