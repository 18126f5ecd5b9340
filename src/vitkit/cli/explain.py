"""`vitkit explain`: where the ViT looks (attention rollout, last-layer [CLS] attention) as PNGs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vitkit.inference.settings import MODEL_HELP

EPILOG = """\
For each image, OUT/<name>.explain.png shows the image, the attention rollout over it (heads
averaged, identity added for the residual path, rows renormalised, layers multiplied) and the
last block's [CLS] attention, with the top-k predictions in the caption. A JSON line per image
(input, output PNG, predictions) is printed.

examples:
  vitkit explain cat.jpg --model google/vit-base-patch16-224 --out maps/
  vitkit explain photos/ --model runs/compare/rows/finetune224/best --out maps/ --top-k 3
  vitkit explain digit.png --model runs/compare/rows/distilled/best --out maps/   # a DeiT student

A CNN (the ResNet baseline) has no attention: explain says so and exits with status 1.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="attention-rollout and [CLS]-attention maps over images",
        description="Draw where a ViT looks: attention rollout and last-layer [CLS] attention.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or URLs")
    parser.add_argument(
        "--model", "-m", default=None, help=MODEL_HELP + " (a transformer: vit or deit)"
    )
    parser.add_argument("--out", "-o", required=True, help="folder for the PNGs")
    parser.add_argument("--top-k", type=int, default=5, help="labels in the caption (default 5)")
    parser.add_argument("--image-size", type=int, default=None, help="run at this resolution")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # torch and the model code load here, not at `vitkit --help` time
    from vitkit.images.sources import expand_inputs
    from vitkit.inference.classifier import load
    from vitkit.inference.explain import explain_files

    classifier = load(args.model, device="cpu", image_size=args.image_size)
    sources = expand_inputs(list(args.inputs))
    for record in explain_files(classifier, sources, args.out, top_k=args.top_k):
        print(json.dumps(record))
    return 0
