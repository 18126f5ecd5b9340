"""CPU forward pass, a DINOv2-B/14-shaped model at 224: vitkit vs transformers vs timm.

The same random weights in all three (transformers' ``Dinov2Model`` saved, read by vitkit; timm's
``vit_base_patch14_dinov2`` given vitkit's state dict, whose names are timm's), real photos, and
the documented DINOv2 embedding from each: transformers' ``pooler_output``, timm's
``model(x)`` (``num_classes=0``: the normalised [CLS]), vitkit's ``Classifier.embed_tensor``
(what ``vitkit embed`` runs). The three outputs are checked to agree before anything is timed.
Timed side by side in interleaved rounds by ``vitkit.bench.timing``; writes
benchmarks/results/dinov2_embedding.json (``_cputime`` with --cpu-time).

    .venv/bin/python benchmarks/bench_dinov2.py --rounds 7 --batch-size 8
    .venv/bin/python benchmarks/bench_dinov2.py --cpu-time --batch-size 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from results_io import write_report
from vitkit.bench.contenders import logits_path_flops, weight_bytes
from vitkit.bench.sample_data import photo_batch
from vitkit.bench.timing import Contender, run_interleaved
from vitkit.checkpoints import load_model
from vitkit.inference.classifier import Classifier
from vitkit.inference.runtime import tune_process_for_inference


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_contenders(directory: Path) -> tuple[list[Contender], dict[str, torch.nn.Module]]:
    import timm
    import transformers

    transformers.utils.logging.set_verbosity_error()
    config = transformers.Dinov2Config(image_size=224, patch_size=14)  # dinov2-base's shape
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(directory)
    reference = transformers.Dinov2Model.from_pretrained(
        directory, attn_implementation="sdpa"
    ).eval()
    ours = load_model(directory).model
    twin = timm.create_model(
        "vit_base_patch14_dinov2", pretrained=False, img_size=224, num_classes=0
    ).eval()
    twin.load_state_dict(ours.state_dict())
    classifier = Classifier(ours, name="vitkit")
    flops = float(ours.flops_per_image())
    # vitkit executes less: its [CLS] embedding runs the last block for [CLS] alone
    executed = logits_path_flops(ours)
    modules = {"vitkit": ours, "transformers-sdpa": reference, "timm": twin}
    contenders = [
        Contender("vitkit", classifier.embed_tensor, executed, weight_bytes(ours)),
        Contender(
            "transformers-sdpa",
            lambda pixels: reference(pixel_values=pixels).pooler_output,
            flops,
            weight_bytes(reference),
        ),
        Contender("timm", twin, flops, weight_bytes(twin)),
    ]
    return contenders, modules


def check_agreement(contenders: list[Contender], pixels: torch.Tensor) -> float:
    """Largest difference between the contenders' embeddings (they must be the same model)."""
    with torch.inference_mode():
        outputs = [contender.forward(pixels) for contender in contenders]
    worst = max(float((output - outputs[0]).abs().max()) for output in outputs[1:])
    if worst > 1e-3:
        raise SystemExit(f"the contenders disagree by {worst:.2e}: not the same model")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="one thread, timed by the process's CPU time (immune to other processes)",
    )
    args = parser.parse_args()
    tune_process_for_inference("cpu")  # an entry point: the allocator setting vitkit's CLI uses
    threads = 1 if args.cpu_time else args.threads
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="vitkit-dinov2-") as directory:
        contenders, _ = build_contenders(Path(directory))
        pixels = photo_batch(args.batch_size, (224, 224))
        agreement = check_agreement(contenders, pixels)
        log(f"embeddings agree within {agreement:.1e}")
        report = run_interleaved(
            contenders,
            pixels,
            rounds=args.rounds,
            repeats=args.repeats,
            title="DINOv2-B/14 at 224, embedding (pooler_output = normalised [CLS])",
            log=log,
            clock=time.process_time if args.cpu_time else time.perf_counter,
        )
    timing = (
        "CPU time of one thread"
        if args.cpu_time
        else f"wall clock, {torch.get_num_threads()} threads"
    )
    path = write_report(
        "dinov2_embedding" + ("_cputime" if args.cpu_time else ""),
        title=f"DINOv2-B/14 embedding at 224, batch {args.batch_size} ({timing})",
        report=report,
        base=contenders[0].name,
        notes="pooler_output = the normalised [CLS]; every contender's embedding agrees within "
        f"{agreement:.1e}.",
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
