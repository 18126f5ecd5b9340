"""`vitkit info MODEL`: what a checkpoint is (format, architecture, size, cost per image)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from vitkit.cli._common import add_precision_option
from vitkit.cli._options import add_options, config_from_args
from vitkit.inference.settings import LoadSettings

EPILOG = """\
MODEL is anything `vitkit.load` reads: a Hugging Face directory (ViT, DeiT student, ResNet), a
Hub id, a timm state dict, a Google .npz file or an .onnx export:

  vitkit info google/vit-base-patch16-224
  vitkit info ViT-B_16.npz --image-size 384
  vitkit info ./my-finetuned-vit --json
  vitkit info uni2-h/pytorch_model.bin --model-arg num_attention_heads=24

"family" names the published model family the weights were recognised as (DINOv2, UNI,
Virchow2, ...) and "embedding" what `vitkit embed` returns for it by default, with its size.

GFLOPs count one forward pass of one image (2 x multiply-accumulates of the matmuls and the patch
projection; softmax and norms are left out), at the model's resolution or --image-size.

--timings measures what a command pays before its first answer, in this process: importing
torch, loading the checkpoint, preparing it for --precision (int8: quantizing), the first
forward of --batch-size images and a steady one after it:

  vitkit info ./my-finetuned-vit --timings --precision int8
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a checkpoint's format, config, parameter count and GFLOPs per image",
        description="Describe a checkpoint: type, format, config, parameters, GFLOPs per image.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint file, directory or Hub id")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="describe the model resampled to this resolution (e.g. 384)",
    )
    parser.add_argument(
        "--num-heads", type=int, default=None, metavar="H", help="attention heads (timm files)"
    )
    add_options(parser, LoadSettings, only=("overrides",))
    parser.add_argument(
        "--timings",
        action="store_true",
        help="also measure start-up: import torch, model load, preparing for --precision, "
        "first and steady forward of --batch-size images",
    )
    add_precision_option(parser)
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images per timed forward (default 1)"
    )
    parser.add_argument("--device", default="cpu", help="where --timings runs (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def describe(model: Any, source: str, checkpoint_format: str) -> dict[str, Any]:
    """The facts `vitkit info` prints, as a JSON-ready dict (any registered model type)."""
    config = model.config
    height, width = config.image_hw
    labels = config.labels()
    facts: dict[str, Any] = {
        "source": source,
        "format": checkpoint_format,
        "model_type": config.model_type,
        "family": getattr(config, "family", "") or config.model_type,
        "embedding": _default_embedding(model),
        "config": {
            name: (list(value) if isinstance(value, tuple) else value)
            for name, value in dataclasses.asdict(config).items()
            if name != "id2label"
        },
        "parameters": model.num_parameters(),
        "gflops_per_image": model.flops_per_image() / 1e9,
        "resolution": f"{height}x{width}",
        "labels": labels[:5] + (["..."] if len(labels) > 5 else []),
        "embeddings": list(model.capabilities.pools),
    }
    if config.num_labels:  # softmax, or sigmoid + thresholds (vitkit.inference.heads)
        from vitkit.inference.heads import head_for

        facts["head"] = head_for(config, labels).describe()
    if hasattr(config, "num_patches"):  # a transformer: its sequence length
        facts["tokens"] = config.num_patches + model.num_prefix_tokens
    return facts


def _default_embedding(model: Any) -> dict[str, Any]:
    """What `vitkit embed` gives without --pool, and its width (when the model can say)."""
    pool = model.capabilities.default_pool
    size_of = getattr(model, "embedding_size", None)
    return {"pool": pool, "size": size_of(pool) if callable(size_of) else None}


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    # torch loads here, not at `vitkit --help` time
    from vitkit.checkpoints import load_model
    from vitkit.inference.runtime import loading_threads

    imported = time.perf_counter()
    with loading_threads():  # as predict / embed / serve load
        loaded = load_model(
            args.model,
            image_size=args.image_size,
            num_attention_heads=args.num_heads,
            overrides=config_from_args(LoadSettings, args).overrides,
        )
    facts = describe(loaded.model, str(args.model), loaded.format)
    if args.timings:
        facts["timings"] = start_up(args, loaded.model, imported - started, imported)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    tokens = f" ({facts['tokens']} tokens)" if "tokens" in facts else ""
    print(f"model        {facts['source']}")
    print(f"type         {facts['model_type']}")
    print(f"format       {facts['format']}")
    print(f"family       {facts['family']}")
    embedding = facts["embedding"]
    size = f", size {embedding['size']}" if embedding["size"] is not None else ""
    print(f"embedding    {embedding['pool']}{size} (what `vitkit embed` gives without --pool)")
    print(f"resolution   {facts['resolution']}{tokens}")
    print(f"parameters   {facts['parameters']:,} ({facts['parameters'] / 1e6:.1f} M)")
    print(f"GFLOPs/image {facts['gflops_per_image']:.4g}")
    head = "none (feature extractor: use `vitkit embed`)"
    if loaded.model.config.num_labels:
        head = f"{loaded.model.config.num_labels} classes: {', '.join(facts['labels'])}"
        head += "; " + _head_kind(facts["head"])
    print(f"head         {head}")
    print(f"embeddings   {', '.join(facts['embeddings'])}")
    print("config")
    for name, value in facts["config"].items():
        print(f"  {name:<24} {value}")
    if args.timings:
        print_timings(facts["timings"])
    return 0


def start_up(
    args: argparse.Namespace, model: Any, import_s: float, loading: float
) -> dict[str, Any]:
    """The --timings facts: this process's own start-up, measured as it happened."""
    from vitkit.inference import runtime

    runtime.tune_process_for_inference(args.device)  # as predict / embed / serve run
    load_s = time.perf_counter() - loading
    measured = runtime.start_up_timings(
        model, precision=args.precision, device=args.device, batch_size=args.batch_size
    )
    return {
        "import_torch_s": import_s,
        "load_s": load_s,
        **measured,
        "precision": args.precision,
        "batch_size": args.batch_size,
    }


def print_timings(timings: dict[str, Any]) -> None:
    batch = f"{timings['batch_size']} image" + ("s" if timings["batch_size"] > 1 else "")
    print(f"timings ({timings['precision']}, {batch}, {timings['threads']:.0f} threads)")
    print(f"  {'import torch + vitkit':<24} {timings['import_torch_s']:.2f} s")
    print(f"  {'load checkpoint':<24} {timings['load_s']:.2f} s")
    print(f"  {'prepare ' + timings['precision']:<24} {timings['prepare_s']:.2f} s")
    print(f"  {'first forward':<24} {timings['first_forward_s']:.3f} s")
    print(f"  {'steady forward':<24} {timings['steady_forward_s']:.3f} s (median of 3)")


def _head_kind(card: dict[str, Any]) -> str:
    if card["activation"] == "softmax":
        return "single-label (softmax)"
    thresholds = list(card["thresholds"].values())
    low, high = min(thresholds), max(thresholds)
    span = f"{low:g}" if low == high else f"{low:g}..{high:g}"
    return f"multi-label (sigmoid), thresholds {span}"
