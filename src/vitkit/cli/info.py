"""`vitkit info MODEL`: what a checkpoint is (format, architecture, size, cost per image)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.inference.settings import InfoSettings, LoadSettings

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
    add_options(parser, InfoSettings)
    add_options(parser, LoadSettings, only=("overrides",))
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> tuple[InfoSettings, dict[str, Any]]:
    """The command's settings and the model overrides (--model-arg)."""
    return config_from_args(InfoSettings, args), config_from_args(LoadSettings, args).overrides


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    chosen, overrides = settings(args)
    # torch loads here, not at `vitkit --help` time
    from vitkit.checkpoints import load_model
    from vitkit.inference.describe import describe
    from vitkit.inference.runtime import loading_threads

    imported = time.perf_counter()
    with loading_threads():  # as predict / embed / serve load
        loaded = load_model(
            chosen.model,
            image_size=chosen.image_size,
            num_attention_heads=chosen.num_heads,
            overrides=overrides,
        )
    facts = describe(loaded.model, chosen.model, loaded.format)
    if chosen.timings:
        facts["timings"] = start_up(chosen, loaded.model, imported - started, imported)
    if chosen.json:
        print(json.dumps(facts, indent=2))
        return 0
    print_facts(facts)
    if chosen.timings:
        print_timings(facts["timings"])
    return 0


def print_facts(facts: dict[str, Any]) -> None:
    from vitkit.inference.describe import head_kind

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
    if "head" in facts:
        head = f"{facts['num_labels']} classes: {', '.join(facts['labels'])}"
        head += "; " + (
            "per pixel (segmentation)" if facts["segmentation"] else head_kind(facts["head"])
        )
    print(f"head         {head}")
    print(f"embeddings   {', '.join(facts['embeddings'])}")
    print("config")
    for name, value in facts["config"].items():
        print(f"  {name:<24} {value}")


def start_up(chosen: InfoSettings, model: Any, import_s: float, loading: float) -> dict[str, Any]:
    """The --timings facts: this process's own start-up, measured as it happened."""
    from vitkit.inference import runtime

    runtime.tune_process_for_inference(chosen.device)  # as predict / embed / serve run
    load_s = time.perf_counter() - loading
    measured = runtime.start_up_timings(
        model, precision=chosen.precision, device=chosen.device, batch_size=chosen.batch_size
    )
    return {
        "import_torch_s": import_s,
        "load_s": load_s,
        **measured,
        "precision": chosen.precision,
        "batch_size": chosen.batch_size,
    }


def print_timings(timings: dict[str, Any]) -> None:
    batch = f"{timings['batch_size']} image" + ("s" if timings["batch_size"] > 1 else "")
    print(f"timings ({timings['precision']}, {batch}, {timings['threads']:.0f} threads)")
    print(f"  {'import torch + vitkit':<24} {timings['import_torch_s']:.2f} s")
    print(f"  {'load checkpoint':<24} {timings['load_s']:.2f} s")
    print(f"  {'prepare ' + timings['precision']:<24} {timings['prepare_s']:.2f} s")
    print(f"  {'first forward':<24} {timings['first_forward_s']:.3f} s")
    print(f"  {'steady forward':<24} {timings['steady_forward_s']:.3f} s (median of 3)")
