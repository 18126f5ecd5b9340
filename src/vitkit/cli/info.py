"""`vitkit info MODEL`: what a checkpoint is (format, architecture, size, cost per image)."""

from __future__ import annotations

import argparse
import json
from typing import Any

EPILOG = """\
MODEL is a Hugging Face directory, a Hub id, a timm state dict or a Google .npz file:

  vitkit info google/vit-base-patch16-224
  vitkit info ViT-B_16.npz --image-size 384
  vitkit info ./my-finetuned-vit --json

GFLOPs count one forward pass of one image (2 x multiply-accumulates of the matmuls and the patch
projection; softmax and norms are left out), at the model's resolution or --image-size.
"""

_CONFIG_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "image_size",
    "num_channels",
    "hidden_act",
    "layer_norm_eps",
    "qkv_bias",
    "add_pooling_layer",
    "classifier_uses_pooler",
    "num_labels",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a checkpoint's format, config, parameter count and GFLOPs per image",
        description="Describe a ViT checkpoint: format, config, parameters, GFLOPs per image.",
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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def describe(model: Any, source: str, checkpoint_format: str) -> dict[str, Any]:
    """The facts `vitkit info` prints, as a JSON-ready dict."""
    config = model.config
    height, width = config.image_hw
    labels = config.labels()
    return {
        "source": source,
        "format": checkpoint_format,
        "config": {
            name: (list(value) if isinstance(value, tuple) else value)
            for name in _CONFIG_FIELDS
            for value in [getattr(config, name)]
        },
        "parameters": model.num_parameters(),
        "gflops_per_image": model.flops_per_image() / 1e9,
        "tokens": config.num_patches + 1,
        "resolution": f"{height}x{width}",
        "labels": labels[:5] + (["..."] if len(labels) > 5 else []),
    }


def run(args: argparse.Namespace) -> int:
    from vitkit.checkpoints import load_model

    loaded = load_model(args.model, image_size=args.image_size, num_attention_heads=args.num_heads)
    facts = describe(loaded.model, str(args.model), loaded.format)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"model        {facts['source']}")
    print(f"format       {facts['format']}")
    print(f"resolution   {facts['resolution']} ({facts['tokens']} tokens)")
    print(f"parameters   {facts['parameters']:,} ({facts['parameters'] / 1e6:.1f} M)")
    print(f"GFLOPs/image {facts['gflops_per_image']:.4g}")
    head = "none (feature extractor: use `vitkit embed`)"
    if loaded.model.config.num_labels:
        head = f"{loaded.model.config.num_labels} classes: {', '.join(facts['labels'])}"
    print(f"head         {head}")
    print("config")
    for name, value in facts["config"].items():
        print(f"  {name:<24} {value}")
    return 0
