"""`vitkit predict`: classify image files, folders and URLs."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from vitkit.cli._common import (
    add_head_options,
    add_inputs_argument,
    add_model_options,
    load_classifier,
    prepared_batches,
    progress_bar,
)
from vitkit.cli._engine import ENGINE_EPILOG, add_engine_options, run_on_ray

EPILOG = """\
examples:
  vitkit predict photo.jpg
  vitkit predict --top-k 3 --format json photos/ https://example.com/cat.jpg
  vitkit predict --model ./my-finetuned-vit --format csv slides/ > predictions.csv
  vitkit predict --model runs/tags/best --threshold 0.3 --tta d4 tiles/   # a multi-label model

A multi-label model (problem_type multi_label_classification) lists every label with its
sigmoid score and threshold, and marks the labels that pass (the thresholds saved with the model
unless --threshold says otherwise); --top-k then trims the others. --tta averages the
probabilities over flips / quarter turns of each image.

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
    add_inputs_argument(parser)
    add_model_options(parser)
    parser.add_argument(
        "--top-k",
        "-k",
        type=int,
        default=None,
        help="labels per image (default 5; multi-label models: every label, and the labels "
        "that pass their threshold are always listed)",
    )
    add_head_options(parser)
    parser.add_argument(
        "--format",
        "-f",
        default="table",
        choices=["table", "json", "jsonl", "csv"],
        help="output format (default table)",
    )
    add_engine_options(parser, add_out=True)
    parser.set_defaults(func=run)


def classify_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per input, in input order: {"input", "predictions"} or {"input", "error"}."""
    from vitkit.images.decode import expand_inputs

    sources = expand_inputs(args.inputs)
    classifier = load_classifier(args)
    classifier.require_head()  # fail once, with the pointer to `embed`, not once per input
    records: dict[str, dict[str, Any]] = {}
    with progress_bar(len(sources), "classifying") as advance:
        for chunk, batch in prepared_batches(classifier, sources, args):
            for index, error in batch.errors.items():
                records[chunk[index]] = {"input": chunk[index], "error": str(error)}
            if batch.indices:
                predictions = classifier.predict_tensor(batch.pixel_values, args.top_k)
                for index, top in zip(batch.indices, predictions, strict=True):
                    records[chunk[index]] = {"input": chunk[index], "predictions": top}
            advance(len(chunk))
    return [records[source] for source in sources]


def run(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return run_on_ray(args, "predict", {"top_k": args.top_k})
    records = classify_all(args)
    write_records(records, args.format)
    failed = [r for r in records if "error" in r]
    for record in failed:
        print(f"vitkit predict: {record['error']}", file=sys.stderr)
    return 1 if failed else 0


def write_records(records: list[dict[str, Any]], output_format: str) -> None:
    if output_format == "json":
        json.dump(records, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif output_format == "jsonl":
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")
    elif output_format == "csv":
        write_csv(records)
    else:
        write_table(records)


def _multi_label(records: list[dict[str, Any]]) -> bool:
    return any("positive" in p for r in records for p in r.get("predictions", []))


def write_csv(records: list[dict[str, Any]]) -> None:
    writer = csv.writer(sys.stdout)
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


def write_table(records: list[dict[str, Any]]) -> None:
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
    width = None if sys.stdout.isatty() else 400
    Console(width=width).print(table)
