"""`vitkit info MODEL`: what a checkpoint is (format, architecture, size, cost per image)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from vitkit.cli._common import add_model_arg_option, parse_model_args

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
    add_model_arg_option(parser)
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
    # torch loads here, not at `vitkit --help` time
    from vitkit.checkpoints import load_model

    loaded = load_model(
        args.model,
        image_size=args.image_size,
        num_attention_heads=args.num_heads,
        overrides=parse_model_args(args.model_arg),
    )
    facts = describe(loaded.model, str(args.model), loaded.format)
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
    return 0


def _head_kind(card: dict[str, Any]) -> str:
    if card["activation"] == "softmax":
        return "single-label (softmax)"
    thresholds = list(card["thresholds"].values())
    low, high = min(thresholds), max(thresholds)
    span = f"{low:g}" if low == high else f"{low:g}..{high:g}"
    return f"multi-label (sigmoid), thresholds {span}"
