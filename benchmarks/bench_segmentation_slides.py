"""`vitkit slide` with a segmentation model on a 40k x 40k slide: peak RSS, coverage of the known
tissue, and the same mask after a SIGKILL and a rerun.

Usage: python benchmarks/bench_segmentation_slides.py [--size 40000] [--work DIR]

The slide is ``bench_slides.py``'s generated JPEG-tiled pyramidal BigTIFF (rounded cores of the
immunohistochemistry sample on white glass, 0.25 µm/px, levels 1, 1/4, 1/16). The model has a
known answer: a linear-head segmenter whose weights are set so that "tissue" is an 8x8 patch
darker than 80% white (the test suite's ``brightness_segmenter``). Each run is ``vitkit slide``
in its own process (tiles of 128 px at 1 µm/px, stride 96: overlapping, blended); its peak RSS
is its own (``wait4``). Then a run is killed (SIGKILL) part-way and run again: its mask must equal
the uninterrupted run's. Coverage: the share of the cores' pixels (on the mask grid, a 2-pixel
rim left out) that the stitched mask covers (tiles were run there), and the share it calls tissue.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import results_io
from bench_slides import CORE, Layout, write_slide

OPTIONS = ["--mpp", "1.0", "--tile-size", "128", "--stride", "96", "--min-tissue", "0.1"]
OPTIONS += ["--batch-size", "32", "--no-progress"]


def brightness_segmenter() -> Any:
    import torch

    from vitkit.models.config import ViTConfig
    from vitkit.models.segmentation import Segmenter, SegmenterConfig

    backbone = ViTConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
        image_size=64, patch_size=8, layer_norm_eps=1e-6,
    )  # fmt: skip
    model = Segmenter(SegmenterConfig(backbone, "linear", {0: "background", 1: "tissue"}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        network = model.backbone
        mean = torch.full((3, 8, 8), 1.0 / (3 * 64))
        network.patch_embed.proj.weight[0], network.patch_embed.proj.weight[1] = mean, -mean
        network.patch_embed.proj.bias[0], network.patch_embed.proj.bias[1] = -0.6, 0.6
        for norm in (network.blocks[0].norm1, network.blocks[0].norm2, network.norm):
            norm.weight.fill_(1.0)
        model.decoder.batch_norm.weight.fill_(1.0)
        model.decoder.batch_norm.running_var.fill_(1.0)
        model.decoder.classifier.weight[0, 0, 0, 0] = 4.0
        model.decoder.classifier.weight[1, 0, 0, 0] = -4.0
    return model.eval()


def run(
    slide: Path, model: Path, out: Path, kill_after_shards: int | None = None
) -> dict[str, Any]:
    """``vitkit slide`` in a child process: seconds, peak RSS (MB), killed or not."""
    command = [sys.executable, "-m", "vitkit", "slide", str(slide), "--model", str(model)]
    command += ["--out", str(out), *OPTIONS]
    started = time.perf_counter()
    child = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "2"})
    killed = False
    work = out / slide.name.split(".")[0] / ".vitkit-work"
    while True:  # wait4, not poll: the child's own rusage (poll would reap it first)
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        shards = len(list(work.glob("shard-*.npz"))) if kill_after_shards is not None else 0
        if kill_after_shards is not None and not killed and shards >= kill_after_shards:
            child.send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    if not killed and code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code})")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "killed": killed,
    }


def coverage(mask: np.ndarray, layout: Layout, downsample: float) -> dict[str, float]:
    """Shares of the cores' pixels (mask grid, 2-px rim excluded) covered, and called tissue."""
    covered = tissue = total = 0
    radius = CORE / 2 / downsample - 2
    for cx, cy in layout.cores:
        centre_x, centre_y = (cx + CORE / 2) / downsample, (cy + CORE / 2) / downsample
        top, left = int(centre_y - radius), int(centre_x - radius)
        if top < 0 or left < 0 or top >= mask.shape[0] or left >= mask.shape[1]:
            continue
        window = mask[top : int(centre_y + radius) + 1, left : int(centre_x + radius) + 1]
        yy, xx = np.mgrid[top : top + window.shape[0], left : left + window.shape[1]]
        inside = (yy + 0.5 - centre_y) ** 2 + (xx + 0.5 - centre_x) ** 2 < radius**2
        values = window[inside]
        total += values.size
        covered += int((values != 255).sum())
        tissue += int((values == 1).sum())
    return {"covered": covered / total, "tissue": tissue / total, "core_pixels": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitkit-bench-segmentation-slides"))
    args = parser.parse_args()
    results_io.mark_start()
    from vitkit.checkpoints import save_model

    args.work.mkdir(parents=True, exist_ok=True)
    slide = args.work / f"slide-{args.size}.tif"
    if not slide.exists():
        write_slide(slide, args.size)
    model = save_model(brightness_segmenter(), args.work / "model")
    whole = run(slide, model, args.work / "whole")
    folder = args.work / "whole" / slide.stem
    mask = np.load(folder / "mask.npy", mmap_mode="r")
    summary_file = (folder / "summary.json").read_text()
    import json

    summary = json.loads(summary_file)
    covered = coverage(np.asarray(mask), Layout(args.size), summary["mask"]["downsample"])
    killed = run(slide, model, args.work / "killed", kill_after_shards=2)
    resumed = run(slide, model, args.work / "killed")
    again = np.load(args.work / "killed" / slide.stem / "mask.npy", mmap_mode="r")
    same = bool(np.array_equal(np.asarray(again), np.asarray(mask)))
    result = {
        "slide_pixels": args.size,
        "tiles": summary["tiles"]["run"],
        "mask_level": summary["mask"]["level"],
        "mask_size": summary["mask"]["size"],
        "peak_rss_mb": max(whole["peak_rss_mb"], resumed["peak_rss_mb"]),
        "coverage_of_cores": round(covered["covered"], 5),
        "tissue_share_of_cores": round(covered["tissue"], 5),
        "killed_then_rerun_same_mask": same,
        "tissue_area_mm2": round(summary["mask"]["classes"]["tissue"]["area_um2"] / 1e6, 3),
    }
    rows = [
        ["uninterrupted", whole["seconds"], whole["peak_rss_mb"]],
        ["killed part-way", killed["seconds"], killed["peak_rss_mb"]],
        ["rerun (resumes)", resumed["seconds"], resumed["peak_rss_mb"]],
    ]
    results_io.write_results(
        "segmentation_slides",
        title=f"Slide masks: `vitkit slide` with a segmentation model, {args.size // 1000}k x "
        f"{args.size // 1000}k",
        summary=result,
        rounds=[whole, killed, resumed],
        table={"columns": ["run", "seconds", "peak RSS MB"], "rows": rows},
        notes=f"{result['tiles']} tiles of 128 px at 1 µm/px (stride 96), mask at level "
        f"{result['mask_level']} ({result['mask_size'][0]} x {result['mask_size'][1]}); the "
        f"mask covers {result['coverage_of_cores']:.2%} of the tissue cores' pixels; after a "
        f"SIGKILL and a rerun the mask is {'identical' if same else 'DIFFERENT'}.",
    )


if __name__ == "__main__":
    main()
