"""`vitkit predict`: classify image files, folders and URLs."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from vitkit.cli._common import (
    add_inputs_argument,
    add_model_options,
    load_classifier,
    prepared_batches,
    progress_bar,
)

EPILOG = """\
examples:
  vitkit predict photo.jpg
  vitkit predict --top-k 3 --format json photos/ https://example.com/cat.jpg
  vitkit predict --model ./my-finetuned-vit --format csv slides/ > predictions.csv

A bad input (missing, truncated, not an image) is reported in its row and the rest are still
predicted; the exit code is 1 if any input failed.
"""


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
    parser.add_argument("--top-k", "-k", type=int, default=5, help="labels per image (default 5)")
    parser.add_argument(
        "--format",
        "-f",
        default="table",
        choices=["table", "json", "jsonl", "csv"],
        help="output format (default table)",
    )
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


def write_csv(records: list[dict[str, Any]]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(["input", "rank", "label", "score", "error"])
    for record in records:
        if "error" in record:
            writer.writerow([record["input"], "", "", "", record["error"]])
            continue
        for rank, prediction in enumerate(record["predictions"], start=1):
            writer.writerow(
                [record["input"], rank, prediction["label"], f"{prediction['score']:.6f}", ""]
            )


def write_table(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("input", "label", "score", show_lines=False)
    for record in records:
        if "error" in record:
            table.add_row(record["input"], f"[red]error: {record['error']}[/red]", "")
            continue
        for rank, prediction in enumerate(record["predictions"]):
            name = record["input"] if rank == 0 else ""
            table.add_row(name, prediction["label"], f"{prediction['score']:.4f}")
    # Piped output has no terminal width: do not squeeze file paths into 80 columns.
    width = None if sys.stdout.isatty() else 400
    Console(width=width).print(table)
