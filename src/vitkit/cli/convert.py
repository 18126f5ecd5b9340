"""`vitkit convert SRC DST`: any checkpoint vitkit reads -> a Hugging Face directory."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.options import option

EPILOG = """\
SRC is anything `vitkit.load` understands: a Hugging Face directory (ViT, DeiT student, ResNet),
a Hub id (google/vit-base-patch16-224), a timm state dict (.safetensors / .pth / .bin) or a Google
vit_jax .npz file. DST becomes a directory with config.json, model.safetensors and
preprocessor_config.json, in the model type's Hugging Face layout, that transformers loads with
no conversion (an .onnx export is not converted back):

  vitkit convert ViT-B_16.npz vit-b16-hf
  vitkit convert vit_base_patch16_384.safetensors vit-b16-384
  vitkit convert google/vit-base-patch16-224 vit-b16-384 --image-size 384

then: transformers.ViTForImageClassification.from_pretrained("vit-b16-hf")

A timm state dict does not record its number of attention heads; vitkit uses timm's value for the
width (ViT-Ti 3, S 6, B 12, L/H 16); pass --num-heads if your model differs. An existing DST
checkpoint directory is replaced only after the new one is complete.
"""


def image_size(text: str) -> int | tuple[int, int]:
    """``--image-size``: N or HxW."""
    try:
        if "x" in text.lower():
            height, width = text.lower().split("x")
            return (int(height), int(width))
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not N or HxW (e.g. 384 or 384x512)") from None


@dataclass(frozen=True)
class ConvertSettings:
    source: str = option(
        help="checkpoint file, directory or Hub id",
        group="checkpoints",
        flags=("source",),
        metavar="SRC",
    )
    destination: str = option(
        help="directory to write", group="checkpoints", flags=("destination",), metavar="DST"
    )
    image_size: int | None = option(
        None,
        "resample the position embeddings to this resolution (e.g. 384 or 384x512)",
        group="model",
        metavar="N|HxW",
        parse=image_size,
        default_help="the checkpoint's",
    )
    num_heads: int | None = option(
        None,
        "attention heads, for timm state dicts whose width is not a standard ViT size",
        group="model",
        metavar="H",
        default_help="timm's for the width",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a ViT checkpoint (HF, timm, .npz, hub id) to a Hugging Face directory",
        description="Convert a ViT checkpoint to a Hugging Face directory (transformers-loadable).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, ConvertSettings)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> ConvertSettings:
    return config_from_args(ConvertSettings, args)


def run(args: argparse.Namespace) -> int:
    # torch loads here, not at `vitkit --help` time
    from vitkit.checkpoints import load_model, save_model

    chosen = settings(args)
    loaded = load_model(
        chosen.source, image_size=chosen.image_size, num_attention_heads=chosen.num_heads
    )
    target = save_model(loaded.model, chosen.destination, processor_config=loaded.preprocessing())
    config = loaded.model.config
    height, width = config.image_hw
    print(
        f"{chosen.source} ({loaded.format}) -> {target}: {loaded.model_type} "
        f"{loaded.model.num_parameters() / 1e6:.1f} M parameters, {height}x{width}, "
        f"{config.num_labels or 'no'} classes",
        file=sys.stderr,
    )
    return 0
