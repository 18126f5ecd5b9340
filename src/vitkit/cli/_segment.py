"""`vitkit predict` with a segmentation model: masks, overlays and class areas per input."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from vitkit.cli._progress import progress_bar
from vitkit.errors import UsageError


def refuse_for_segmentation(predict: Any) -> None:
    """UsageError naming a predict option a segmentation model cannot honour."""
    if predict.top_k is not None:
        raise UsageError("--top-k: a segmentation model answers per pixel, not with top labels")


def segment_command(load: Any, predict: Any, masks: Any) -> int:
    """Segment every input: files under ``--masks-out``, the areas printed (or to ``--out``)."""
    from vitkit.atomic_files import atomic_open
    from vitkit.images.sources import expand_inputs
    from vitkit.inference import runtime
    from vitkit.inference.seg_files import segment_sources
    from vitkit.inference.segmentation import SegmentationRunner

    refuse_for_segmentation(predict)
    if masks.masks_out is None:
        raise UsageError(
            f"--masks-out: {load.source} is a segmentation model; name a folder for its masks, "
            "overlays and class areas"
        )
    runtime.tune_process_for_inference(load.device)
    with runtime.loading_threads():
        runner = SegmentationRunner.from_settings(load)
    sources = expand_inputs(predict.inputs)
    with progress_bar(len(sources), "segmenting") as advance:
        records = segment_sources(
            runner, sources, masks, batch_size=predict.batch_size, workers=predict.workers,
            progress=advance,
        )  # fmt: skip
    if predict.out is None:
        write_area_records(records, predict.format, sys.stdout)
    else:
        with atomic_open(predict.out, "w", newline="") as handle:
            write_area_records(records, predict.format, handle)
    print(f"masks, overlays and areas in {masks.masks_out}", file=sys.stderr)
    failed = [r for r in records if "error" in r]
    for record in failed:
        print(f"vitkit predict: {record['error']}", file=sys.stderr)
    return 1 if failed else 0


def write_area_records(records: list[dict[str, Any]], output_format: str, stream: IO[str]) -> None:
    """The class areas of every input: a table, JSON, JSON lines or CSV."""
    from vitkit.inference.seg_files import area_csv

    if output_format == "json":
        json.dump(records, stream, indent=2)
        stream.write("\n")
    elif output_format == "jsonl":
        stream.writelines(json.dumps(record) + "\n" for record in records)
    elif output_format == "csv":
        stream.write(area_csv(records))
    else:
        _write_table(records, stream)


def _write_table(records: list[dict[str, Any]], stream: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("input", "class", "share of pixels", "pixels")
    for record in records:
        if "error" in record:
            table.add_row(record["input"], f"[red]error: {record['error']}[/red]", "", "")
            continue
        present = [row for row in record["areas"] if row["pixels"]]
        for rank, row in enumerate(sorted(present, key=lambda r: -r["pixels"])):
            name = record["input"] if rank == 0 else ""
            table.add_row(name, row["label"], f"{row['fraction']:.1%}", str(row["pixels"]))
    width = None if stream.isatty() else 400
    Console(file=stream, width=width).print(table)
