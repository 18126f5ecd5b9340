"""Options and helpers shared by several sub-commands (not a sub-command itself)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from vitkit.errors import VitkitError

MODEL_HELP = (
    "checkpoint to use: an HF directory (ViT, DeiT student, ResNet: what `vitkit train`, "
    "`distill` and `compare` save), a hub id (google/vit-base-patch16-224), a timm "
    ".safetensors/.pth/.bin file, a Google .npz or an .onnx export (default: $VITKIT_MODEL or "
    "google/vit-base-patch16-224)"
)
PROGRESS_THRESHOLD = 5  # fewer inputs than this: no progress bar


def add_inputs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", help="image files, folders (searched recursively) or URLs"
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="run at this resolution, resampling position embeddings (e.g. 384)",
    )
    add_precision_option(parser)
    add_threads_option(parser)
    add_model_arg_option(parser)
    parser.add_argument(
        "--batch-size", "-b", type=int, default=16, help="images per forward pass (default 16)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="image-decoding threads (default 2); with --engine ray: Ray workers, each a model",
    )
    add_jpeg_draft_option(parser)


# = vitkit.inference.tta.TTA_MODES, for the same reason (tests check they agree).
TTA_CHOICES = ("none", "flip", "rot90", "d4")

# = vitkit.inference.runtime.PRECISIONS, so `vitkit --help` does not import torch (tests check they agree).
PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8")


def add_precision_option(parser: Any) -> None:
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISION_CHOICES,
        help="numeric precision (default fp32; int8: dynamic quantization on CPU, ~1.7x faster "
        "on a 2-core AVX2 CPU; bf16/fp16: GPU only)",
    )


def threads_value(text: str) -> int | str:
    """argparse type of ``--threads``: "auto" or a whole number >= 1.

    The same rule as ``vitkit.inference.runtime.check_threads`` (which library callers meet),
    written here because the CLI parses before torch is imported (``vitkit --help``)."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'auto' or a whole number >= 1")
    return int(text)


def add_threads_option(parser: Any) -> None:
    parser.add_argument(
        "--threads",
        type=threads_value,
        default="auto",
        help="CPU threads per forward pass: a number, which always wins, or 'auto' (default: "
        "by batch size and by the cores other processes keep busy; vitkit's own decoding "
        "threads do not count)",
    )


def add_tta_option(parser: Any) -> None:
    parser.add_argument(
        "--tta",
        default="none",
        choices=TTA_CHOICES,
        help="test-time augmentation: the mean over flip (2 views), rot90 (4 quarter turns) or "
        "d4 (all 8 flips and turns), one forward pass; for images with no 'up' (default none)",
    )


def add_head_options(parser: Any) -> None:
    """``--threshold``, ``--problem-type`` and ``--tta``: how the head's scores are read."""
    parser.add_argument(
        "--threshold",
        default=None,
        help="multi-label models: a label is reported as present from this probability on; one "
        "value (0.4), one per label (0.3,0.5,...) or label=value pairs (default: the thresholds "
        "saved with the model, else 0.5)",
    )
    parser.add_argument(
        "--problem-type",
        default=None,
        choices=["single_label", "multi_label"],
        help="what the head was trained for when the checkpoint does not say (timm files, "
        "configs without problem_type): softmax over exclusive classes, or one sigmoid per label",
    )
    add_tta_option(parser)


def add_jpeg_draft_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="APPROXIMATE, faster: decode JPEGs at a reduced DCT scale (1/2, 1/4, ...) before "
        "the resize; scores differ slightly from the checkpoint's exact preprocessing",
    )


def add_model_arg_option(parser: Any) -> None:
    """``--model-arg KEY=VALUE`` (repeatable): a ViTConfig field the checkpoint does not record."""
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a model setting the checkpoint does not record, e.g. num_attention_heads=24, "
        "global_pool=avg, dynamic_img_size=true (timm files: what the shapes cannot tell; "
        "repeatable)",
    )


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """``["num_hidden_layers=4", "global_pool=avg"]`` -> dict, values parsed as JSON when they can be."""
    import json

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise VitkitError(f"--model-arg {pair!r}: expected KEY=VALUE, e.g. num_hidden_layers=4")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def load_classifier(args: argparse.Namespace) -> Any:
    """The Classifier for ``--model`` etc., in a process tuned for inference (an entry point's
    choice: allocator thresholds on a CPU, TF32 and cuDNN autotuning on CUDA)."""
    # torch loads here, not at `vitkit --help` time
    from vitkit.inference import classifier, runtime
    from vitkit.inference.heads import parse_thresholds

    runtime.tune_process_for_inference(args.device)
    threshold = getattr(args, "threshold", None)
    with runtime.loading_threads():
        return classifier.load(
            args.model,
            device=args.device,
            image_size=args.image_size,
            precision=args.precision,
            jpeg_draft=getattr(args, "jpeg_draft", False),
            problem_type=getattr(args, "problem_type", None),
            threshold=parse_thresholds(threshold) if threshold is not None else None,
            tta=getattr(args, "tta", "none"),
            overrides=parse_model_args(getattr(args, "model_arg", [])),
            threads=getattr(args, "threads", "auto"),
        )


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Any]:
    """A rich progress bar on stderr; a no-op for a handful of inputs."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=total < PROGRESS_THRESHOLD,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def prepared_batches(
    classifier: Any, sources: list[str], args: argparse.Namespace
) -> Iterator[tuple[list[str], Any]]:
    """(chunk of sources, PreparedBatch) pairs: decode + preprocess in worker threads, one batch
    ahead, so the next batch is decoded while the caller runs the model on this one.

    A bad input lands in the batch's ``errors`` (by position in the chunk) and never stops the
    rest, which is what a folder of mixed quality needs.
    """
    chunks = [sources[i : i + args.batch_size] for i in range(0, len(sources), args.batch_size)]

    def prepare(chunk: list[str]) -> Any:
        return classifier.processor.load_batch(
            chunk, workers=args.workers, mode=classifier.processor_mode
        )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitkit-prefetch") as ahead:
        pending = ahead.submit(prepare, chunks[0]) if chunks else None
        for index, chunk in enumerate(chunks):
            assert pending is not None
            batch = pending.result()
            if index + 1 < len(chunks):
                pending = ahead.submit(prepare, chunks[index + 1])
            yield chunk, batch
