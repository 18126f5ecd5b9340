"""Segmentation speed against transformers on the same weights (CPU).

Usage: python benchmarks/bench_segmentation_speed.py [--rounds 3] [--threads 2]

1. Forward: vitkit's DPT (``Segmenter``) vs transformers' ``DPTForSemanticSegmentation`` read
   from the same directory, a batch of 8 at the processor's 384x384, in one process, rounds
   interleaved (vitkit, transformers, vitkit, ...), ``torch.inference_mode``. The model: a DPT on
   a ViT-S/16 encoder (width 384, 12 blocks), 150 classes (ADE20k's count), random weights.
2. Whole command: ``vitkit predict --masks-out`` (masks, overlays, areas) vs a transformers
   script (``pipeline("image-segmentation")`` over the same files, every class mask it returns
   saved as PNG), each a fresh process, on 16 photos (scikit-image's and scikit-learn's
   sample photos, and flipped copies), rounds interleaved.

Writes benchmarks/results/segmentation_speed.json (every round, the medians and ratios).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import results_io

SCRIPT = """
import sys
from pathlib import Path
from transformers import pipeline
segmenter = pipeline("image-segmentation", model=sys.argv[1], device="cpu")
out = Path(sys.argv[3]); out.mkdir(parents=True, exist_ok=True)
files = sorted(Path(sys.argv[2]).glob("*.jpg"))
for path, answer in zip(files, segmenter([str(p) for p in files], batch_size=8)):
    for index, region in enumerate(answer):
        region["mask"].save(out / f"{path.stem}-{index}.png")
"""


def make_model(folder: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.DPTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
        image_size=384, patch_size=16, neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=128, num_labels=150,
    )  # fmt: skip
    model = transformers.DPTForSemanticSegmentation(config).eval()
    model.save_pretrained(folder / "dpt")
    transformers.DPTImageProcessor(size={"height": 384, "width": 384}).save_pretrained(
        folder / "dpt"
    )
    return folder / "dpt"


def make_photos(folder: Path) -> Path:
    import numpy as np
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    pictures = [
        data.astronaut(),
        data.coffee(),
        data.chelsea(),
        data.immunohistochemistry(),
        china,
        flower,
    ]
    photos = folder / "photos"
    photos.mkdir()
    for index in range(16):
        pixels = pictures[index % len(pictures)]
        if index >= len(pictures):
            pixels = np.ascontiguousarray(pixels[:, ::-1] if index < 12 else pixels[::-1])
        Image.fromarray(pixels).save(photos / f"photo_{index:02d}.jpg", quality=92)
    return photos


def forward_rounds(model_dir: Path, rounds: int, threads: int) -> list[dict[str, float]]:
    import torch
    import transformers

    from vitkit.checkpoints import load_model

    torch.set_num_threads(threads)
    theirs = transformers.DPTForSemanticSegmentation.from_pretrained(model_dir).eval()
    ours = load_model(model_dir).model.eval()
    pixels = torch.randn(8, 3, 384, 384)
    with torch.inference_mode():
        assert torch.allclose(
            ours.forward_logits(pixels), theirs(pixel_values=pixels).logits, atol=1e-3
        )
        results = []
        for _ in range(rounds):
            row = {}
            for name, run in (
                ("vitkit", lambda: ours.forward_logits(pixels)),
                ("transformers", lambda: theirs(pixel_values=pixels).logits),
            ):
                started = time.perf_counter()
                run()
                row[name] = time.perf_counter() - started
            results.append(row)
    return results


def command_rounds(
    model_dir: Path, photos: Path, work: Path, rounds: int
) -> list[dict[str, float]]:
    commands = {
        "vitkit": lambda i: [
            sys.executable, "-m", "vitkit", "predict", "--model", str(model_dir), "--masks-out",
            str(work / f"ours-{i}"), "--batch-size", "8", "--format", "json", str(photos),
        ],
        "transformers": lambda i: [sys.executable, "-c", SCRIPT, str(model_dir), str(photos), str(work / f"theirs-{i}")],
    }  # fmt: skip
    results = []
    for index in range(rounds):
        row = {}
        for name, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command(index), check=True, stdout=subprocess.DEVNULL)
            row[name] = time.perf_counter() - started
        results.append(row)
    return results


def summarise(rounds: list[dict[str, float]]) -> dict[str, Any]:
    ours = statistics.median(r["vitkit"] for r in rounds)
    theirs = statistics.median(r["transformers"] for r in rounds)
    ratios = [r["transformers"] / r["vitkit"] for r in rounds]
    return {
        "vitkit_s": round(ours, 3),
        "transformers_s": round(theirs, 3),
        "speedup_median": round(statistics.median(ratios), 3),
        "speedup_per_round": [round(x, 3) for x in ratios],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results_io.mark_start()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model_dir = make_model(folder)
        photos = make_photos(folder)
        forward = forward_rounds(model_dir, args.rounds, args.threads)
        command = command_rounds(model_dir, photos, folder, args.rounds)
    summary = {"forward_batch8": summarise(forward), "predict_16_photos": summarise(command)}
    table = {
        "columns": ["measure", "vitkit (s)", "transformers (s)", "speed-up (median of rounds)"],
        "rows": [
            [
                name,
                f"{s['vitkit_s']:.2f}",
                f"{s['transformers_s']:.2f}",
                f"{s['speedup_median']:.2f}x",
            ]
            for name, s in (
                ("DPT forward, batch 8, 384 px", summary["forward_batch8"]),
                ("predict 16 photos, whole command", summary["predict_16_photos"]),
            )
        ],
    }
    results_io.write_results(
        "segmentation_speed",
        title="Segmentation speed: vitkit vs transformers on the same DPT weights (CPU)",
        summary=summary,
        rounds=[{"forward": forward}, {"command": command}],
        table=table,
        notes=f"DPT on a ViT-S/16 encoder, 150 classes, random weights; forward on {args.threads} "
        "torch threads; commands with their own defaults; rounds interleaved.",
    )


if __name__ == "__main__":
    main()
