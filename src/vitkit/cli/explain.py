"""`vitkit explain`: where the ViT looks (attention rollout, last-layer [CLS] attention) as PNGs."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.inference.settings import LoadSettings
from vitkit.options import option

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


@dataclass(frozen=True)
class ExplainSettings:
    inputs: list[str] = option(
        help="image files, folders or URLs", group="inputs", flags=("inputs",), metavar="IMAGE"
    )
    out: str = option(help="folder for the PNGs", group="output", flags=("--out", "-o"))
    top_k: int = option(5, "labels in the caption", group="output")


# The LoadSettings fields explain offers: the model, at a size (attention maps need the
# network's own fp32 forward).
EXPLAIN_LOAD_FIELDS = ("model", "image_size", "overrides")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="attention-rollout and [CLS]-attention maps over images",
        description="Draw where a ViT looks: attention rollout and last-layer [CLS] attention.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, ExplainSettings)
    add_options(parser, LoadSettings, only=EXPLAIN_LOAD_FIELDS)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> tuple[LoadSettings, ExplainSettings]:
    load = config_from_args(LoadSettings, args).replace(device="cpu")
    return load, config_from_args(ExplainSettings, args)


def run(args: argparse.Namespace) -> int:
    # torch and the model code load here, not at `vitkit --help` time
    from vitkit.images.sources import expand_inputs
    from vitkit.inference.classifier import load_settings
    from vitkit.inference.explain import explain_files

    load, chosen = settings(args)
    classifier = load_settings(load)
    sources = expand_inputs(chosen.inputs)
    for record in explain_files(classifier, sources, chosen.out, top_k=chosen.top_k):
        print(json.dumps(record))
    return 0
