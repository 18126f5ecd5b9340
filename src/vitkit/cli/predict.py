"""`vitkit predict`: classify image files, folders and URLs."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import IO, Any

from vitkit.atomic_files import atomic_open
from vitkit.cli._engine import ENGINE_EPILOG, batch_job, run_on_ray
from vitkit.cli._loading import ENTRY_POINT_DEFAULTS, load_classifier
from vitkit.cli._options import add_options, config_from_args
from vitkit.cli._progress import progress_bar
from vitkit.engines.settings import EngineSettings, PredictSettings, refuse_unhonoured
from vitkit.errors import UsageError
from vitkit.inference.seg_settings import MaskOutputSettings
from vitkit.inference.settings import LoadSettings

EPILOG = """\
examples:
  vitkit predict photo.jpg
  vitkit predict --top-k 3 --format json photos/ https://example.com/cat.jpg
  vitkit predict --model ./my-finetuned-vit --format csv slides/ > predictions.csv
  vitkit predict --model runs/tags/best --threshold 0.3 --tta d4 tiles/   # a multi-label model
  vitkit predict --model runs/seg/best --masks-out seg/ photos/   # a segmentation model

A multi-label model (problem_type multi_label_classification) lists every label with its
sigmoid score and threshold, and marks the labels that pass (the thresholds saved with the model
unless --threshold says otherwise); --top-k then trims the others. --tta averages the
probabilities over flips / quarter turns of each image.
A segmentation model (a DPT directory, or what `vitkit train` makes from images/ + masks/)
writes each input's mask, overlay and class areas under --masks-out and prints the areas.

A bad input (missing, truncated, not an image) is reported in its row and the rest are still
predicted; the exit code is 1 if any input failed.

""" + ENGINE_EPILOG.format(command="predict", out="predictions/")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify images (files, folders, URLs)",
        description="Classify images with a ViT checkpoint and print the top-k labels.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, PredictSettings)
    add_options(parser, LoadSettings, defaults=ENTRY_POINT_DEFAULTS)
    add_options(parser, EngineSettings)
    add_options(parser, MaskOutputSettings)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> Any:
    """What the command hands the library: (LoadSettings, PredictSettings) in this process, the
    BatchJob on Ray; an option the chosen engine cannot honour is refused here."""
    load = config_from_args(LoadSettings, args)
    predict = config_from_args(PredictSettings, args)
    engine = config_from_args(EngineSettings, args)
    try:
        masks = config_from_args(MaskOutputSettings, args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    refuse_unhonoured(engine.engine, predict, load, engine, masks)
    if engine.on_ray:
        return batch_job("predict", load, predict, engine, top_k=predict.top_k)
    return load, predict, masks


def run(args: argparse.Namespace) -> int:
    from vitkit.checkpoints.hf_dpt import is_segmentation_checkpoint

    if args.engine == "ray":
        job = settings(args)
        if is_segmentation_checkpoint(config_from_args(LoadSettings, args).source):
            raise UsageError("--engine ray: segmentation models predict in this process")
        return run_on_ray(job)
    load, predict, masks = settings(args)

    if is_segmentation_checkpoint(load.source):
        from vitkit.cli._segment import segment_command

        return segment_command(load, predict, masks)
    if masks.given:
        raise UsageError(
            f"{masks.given[0]}: for segmentation models; {load.source} gives one answer per image"
        )
    records = classify_all(load, predict)
    if predict.out is None:
        write_records(records, predict.format, sys.stdout)
    else:
        predict.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(predict.out, "w", newline="") as handle:
            write_records(records, predict.format, handle)
        print(f"wrote {len(records)} records to {predict.out}", file=sys.stderr)
    failed = [r for r in records if "error" in r]
    for record in failed:
        print(f"vitkit predict: {record['error']}", file=sys.stderr)
    return 1 if failed else 0


def classify_all(load: LoadSettings, predict: PredictSettings) -> list[dict[str, Any]]:
    """One record per input, in input order: {"input", "predictions"} or {"input", "error"}."""
    from vitkit.images.sources import expand_inputs
    from vitkit.inference.files import predict_sources

    sources = expand_inputs(predict.inputs)
    classifier = load_classifier(load)
    with progress_bar(len(sources), "classifying") as advance:
        return predict_sources(
            classifier,
            sources,
            top_k=predict.top_k,
            batch_size=predict.batch_size,
            workers=predict.workers,
            progress=advance,
        )


def write_records(records: list[dict[str, Any]], output_format: str, stream: IO[str]) -> None:
    if output_format == "json":
        json.dump(records, stream, indent=2)
        stream.write("\n")
    elif output_format == "jsonl":
        for record in records:
            stream.write(json.dumps(record) + "\n")
    elif output_format == "csv":
        write_csv(records, stream)
    else:
        write_table(records, stream)


def _multi_label(records: list[dict[str, Any]]) -> bool:
    return any("positive" in p for r in records for p in r.get("predictions", []))


def write_csv(records: list[dict[str, Any]], stream: IO[str]) -> None:
    writer = csv.writer(stream)
    extra = ["threshold", "positive"] if _multi_label(records) else []
    writer.writerow(["input", "rank", "label", "score", *extra, "error"])
    for record in records:
        if "error" in record:
            writer.writerow([record["input"], "", "", "", *["" for _ in extra], record["error"]])
            continue
        for rank, prediction in enumerate(record["predictions"], start=1):
            decision = (
                [f"{prediction['threshold']:.6f}", int(prediction["positive"])] if extra else []
            )
            writer.writerow(
                [
                    record["input"],
                    rank,
                    prediction["label"],
                    f"{prediction['score']:.6f}",
                    *decision,
                    "",
                ]
            )


def write_table(records: list[dict[str, Any]], stream: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    multi_label = _multi_label(records)
    columns = ["input", "label", "score"] + (["threshold", "present"] if multi_label else [])
    table = Table(*columns, show_lines=False)
    for record in records:
        if "error" in record:
            table.add_row(record["input"], f"[red]error: {record['error']}[/red]", "")
            continue
        for rank, prediction in enumerate(record["predictions"]):
            name = record["input"] if rank == 0 else ""
            row = [name, prediction["label"], f"{prediction['score']:.4f}"]
            if multi_label:
                present = "[green]yes[/green]" if prediction["positive"] else ""
                row += [f"{prediction['threshold']:.3f}", present]
            table.add_row(*row)
    # Piped output has no terminal width: do not squeeze file paths into 80 columns.
    width = None if stream.isatty() else 400
    Console(file=stream, width=width).print(table)
