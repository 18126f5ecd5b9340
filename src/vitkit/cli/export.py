"""`vitkit export`: write a checkpoint as ONNX (dynamic batch) for onnxruntime."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.errors import OnnxError
from vitkit.options import option

EPILOG = """\
examples:
  vitkit export --format onnx google/vit-base-patch16-224 vit-b16.onnx
  vitkit export --format onnx ./my-finetuned-vit model.onnx --outputs logits
  vitkit export --format onnx vit_small.safetensors small-384.onnx --image-size 384

The file carries the model's type, config and preprocessing in its metadata: every command
takes it as --model (vitkit predict --model model.onnx ...), and vitkit.load("model.onnx") runs
it on onnxruntime. Transformers (vit, deit) export; a ResNet says it cannot.
The export is checked against PyTorch on real photos (max |logit difference| is printed;
--tolerance sets the failure threshold).
"""


@dataclass(frozen=True)
class ExportSettings:
    model: str = option(
        help="HF directory (ViT or DeiT student) or hub id, timm file, or Google .npz",
        group="export",
        flags=("model",),
    )
    output: str = option(help="the .onnx file to write", group="export", flags=("output",))
    format: str = option("onnx", "export format", group="export", choices=("onnx",))
    outputs: str = option(
        "all",
        "all: logits + last_hidden_state (+ pooler_output), for predict and embed; logits: "
        "classification only, ~6% faster",
        group="export",
        choices=("all", "logits"),
    )
    image_size: int | None = option(
        None, "export at this resolution", group="export", default_help="the checkpoint's"
    )
    opset: int = option(18, "ONNX opset", group="export")
    tolerance: float = option(1e-4, "max |logit difference| from PyTorch allowed", group="export")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX for onnxruntime",
        description="Export a transformer checkpoint (vit, deit) to ONNX with a dynamic batch "
        "dimension.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, ExportSettings)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> ExportSettings:
    return config_from_args(ExportSettings, args)


def run(args: argparse.Namespace) -> int:
    # torch and onnx load here, not at `vitkit --help` time
    import torch

    from vitkit.bench.sample_data import photo_batch
    from vitkit.checkpoints import load_model
    from vitkit.checkpoints.onnx import export_onnx
    from vitkit.models.protocol import require

    chosen = settings(args)
    loaded = load_model(chosen.model, image_size=chosen.image_size)
    model = loaded.model.eval()
    require(model, "onnx_export", "be exported to ONNX")
    path = export_onnx(
        model,
        chosen.output,
        outputs="logits" if chosen.outputs == "logits" else "all",
        processor_config=loaded.processor_config,
        opset=chosen.opset,
    )
    pixels = photo_batch(3, model.config.image_hw)
    with torch.inference_mode():
        expected = model(pixels)
    name = "logits" if model.config.num_labels else "last_hidden_state"
    reference = expected.logits if model.config.num_labels else expected.last_hidden_state
    assert reference is not None
    got = load_model(path).model.run(pixels, [name])[name]
    difference = float((got - reference).abs().max())
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB); max |{name} difference| "
        f"vs PyTorch on 3 photos: {difference:.2e}"
    )
    if difference > chosen.tolerance:
        raise OnnxError(
            f"{path}: ONNX {name} differ from PyTorch by {difference:.2e} > {chosen.tolerance:g}; "
            "try another --opset"
        )
    return 0
