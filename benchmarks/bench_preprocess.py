"""Preprocessing throughput: JPEG files -> (B, 3, 224, 224) float32, decode included, one core.

Contenders, all reading the same 640x480 JPEG files (made from the real sample photos of
scikit-image and scikit-learn) and producing the same ViT input (bilinear 224x224, mean=std=0.5):

- vitkit fast:  ImageProcessor(mode="fast")(paths)       (bit-identical to transformers default)
- vitkit pil:   ImageProcessor(mode="pil")(paths)        (bit-identical to ViTImageProcessorPil)
- transformers ViTImageProcessor (its default, torchvision backend), given the paths (it decodes
  them with torchvision) and given PIL images from ``transformers.image_utils.load_image``
  (what ``pipeline("image-classification")`` does);
- transformers ViTImageProcessorPil, given the paths (it decodes them with PIL).

Rounds are interleaved in one process (every contender once per round, order rotated) and the
median round is reported, so the shared machine's noise hits all of them alike. Ratios come from
the same run. Writes benchmarks/results/preprocess.json.

    .venv/bin/python benchmarks/bench_preprocess.py --rounds 9
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from results_io import median_spread, spread, write_results
from vitkit.images.processor import ImageProcessor

DECODE_ONLY = "(floor) torchvision decode_jpeg alone, no resize/normalize"
RGBX_DECODE_ONLY = "(floor) simplejpeg RGBX decode alone (vitkit's decoder), no resize/normalize"


def sample_photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "immunohistochemistry": data.immunohistochemistry(),
    }
    china, flower = load_sample_images().images
    photos.update(china=china, flower=flower)
    return photos


def write_jpegs(directory: Path, copies: int) -> list[str]:
    """640x480 JPEGs (quality 90) of the sample photos, ``copies`` files each."""
    paths = []
    for name, pixels in sample_photos().items():
        image = Image.fromarray(pixels).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC)
        for copy in range(copies):
            path = directory / f"{name}_{copy}.jpg"
            image.save(path, "JPEG", quality=90)
            paths.append(str(path))
    return paths


Batches = list[torch.Tensor]


def contenders(paths: list[str], batch_size: int) -> dict[str, Callable[[bool], Batches]]:
    import simplejpeg
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from transformers import ViTImageProcessor, ViTImageProcessorPil
    from transformers.image_utils import load_image

    fast = ImageProcessor(mode="fast")
    draft = ImageProcessor(mode="fast", jpeg_draft=True)
    pil = ImageProcessor(mode="pil")
    hf_default, hf_pil = ViTImageProcessor(), ViTImageProcessorPil()
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]

    def run(step: Callable[[list[str]], torch.Tensor]) -> Callable[[bool], Batches]:
        def over_all_batches(keep: bool) -> Batches:
            # Timed rounds drop each batch once made, as a model loop does (it eats the batch,
            # then the next one reuses the freed memory); keeping every batch alive instead makes
            # each 4.8 MB batch fresh memory: ~120 page faults per image, for every contender.
            kept = []
            for batch in batches:
                pixel_values = step(batch)
                if keep:
                    kept.append(pixel_values)
            return kept

        return over_all_batches

    def decode_only(batch: list[str]) -> torch.Tensor:
        for path in batch:
            decode_jpeg(read_file(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        return torch.empty(0)

    def rgbx_decode_only(batch: list[str]) -> torch.Tensor:
        for path in batch:
            with open(path, "rb") as file:
                simplejpeg.decode_jpeg(
                    file.read(), colorspace="RGBX", fastdct=False, fastupsample=False
                )
        return torch.empty(0)

    return {
        DECODE_ONLY: run(decode_only),
        RGBX_DECODE_ONLY: run(rgbx_decode_only),
        "vitkit fast": run(lambda b: fast(b)),
        "vitkit fast + jpeg_draft (approximate)": run(lambda b: draft(b)),
        "vitkit pil (exact classic)": run(lambda b: pil(b)),
        "transformers ViTImageProcessor (paths)": run(
            lambda b: hf_default(b, return_tensors="pt")["pixel_values"]
        ),
        "transformers ViTImageProcessor (load_image + processor)": run(
            lambda b: hf_default([load_image(p) for p in b], return_tensors="pt")["pixel_values"]
        ),
        "transformers ViTImageProcessorPil (paths)": run(
            lambda b: hf_pil(b, return_tensors="pt")["pixel_values"]
        ),
    }


def measure(
    runs: dict[str, Callable[[bool], Batches]], rounds: int, images: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, float]]:
    """(CPU seconds, wall seconds) per contender and round, interleaved; and the parity check.

    CPU time (``time.process_time``; one thread, so one core's busy time) is the headline: on a
    shared, oversubscribed machine wall time also counts the moments the process waits for a
    core. The order of contenders rotates each round.
    """
    names = list(runs)
    # warm-up, and the outputs for the parity checks
    outputs = {name: torch.cat(runs[name](True)) for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            runs[name](False)
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    return cpu, wall, check_parity(outputs)


def check_parity(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    fast_diff = (outputs["vitkit fast"] - outputs["transformers ViTImageProcessor (paths)"]).abs()
    pil_diff = (
        outputs["vitkit pil (exact classic)"] - outputs["transformers ViTImageProcessorPil (paths)"]
    ).abs()
    draft_diff = (outputs["vitkit fast + jpeg_draft (approximate)"] - outputs["vitkit fast"]).abs()
    print(f"max |vitkit fast - ViTImageProcessor|    = {fast_diff.max().item():.3g}")
    print(f"max |vitkit pil  - ViTImageProcessorPil| = {pil_diff.max().item():.3g}")
    if fast_diff.max() > 1e-5 or pil_diff.max() > 1e-5:
        raise SystemExit("parity broken: the speed numbers would compare different work")
    return {
        "draft_max": draft_diff.max().item(),
        "draft_mean": draft_diff.mean().item(),
        "modes_max": (outputs["vitkit fast"] - outputs["vitkit pil (exact classic)"])
        .abs()
        .max()
        .item(),
    }


DEFAULT_PATHS = "transformers ViTImageProcessor (paths)"
DEFAULT_PIPELINE = "transformers ViTImageProcessor (load_image + processor)"
PIL_BACKEND = "transformers ViTImageProcessorPil (paths)"


def publish(
    cpu: dict[str, list[float]],
    wall: dict[str, list[float]],
    differences: dict[str, float],
    args: argparse.Namespace,
    images: int,
) -> Path:
    """benchmarks/results/preprocess.json: rates from CPU time (one thread: one core's busy
    time, which other processes cannot inflate) and wall time; ratios taken round by round."""

    def ratios(name: str, base: str) -> list[float]:
        return [theirs / mine for mine, theirs in zip(cpu[name], cpu[base], strict=True)]

    rows = [
        [
            name,
            median_spread([images / s for s in cpu[name]], 0),
            median_spread([images / s for s in wall[name]], 0),
            *(
                median_spread(ratios(name, base)) + "x"
                for base in (DEFAULT_PATHS, DEFAULT_PIPELINE, PIL_BACKEND)
            ),
        ]
        for name in cpu
    ]
    summary = {
        name: {
            "images_per_cpu_s": spread([images / s for s in cpu[name]]),
            "vs_default_paths": spread(ratios(name, DEFAULT_PATHS)),
            "vs_pil_backend": spread(ratios(name, PIL_BACKEND)),
        }
        for name in cpu
    }
    return write_results(
        "preprocess",
        title="Preprocessing on one core: JPEG files to normalised tensors",
        command="python benchmarks/bench_preprocess.py " + " ".join(sys.argv[1:]),
        summary={**summary, "differences": differences},
        rounds=[{"pipeline": name, "cpu_s": cpu[name], "wall_s": wall[name]} for name in cpu],
        table={
            "columns": [
                "pipeline",
                "images/s per core (CPU time)",
                "images/s (wall)",
                "vs ViTImageProcessor, paths",
                "vs load_image + ViTImageProcessor",
                "vs ViTImageProcessorPil",
            ],
            "rows": rows,
        },
        notes=(
            f"{images} JPEG files, 640x480, quality 90, made from the six bundled sample photos; "
            "output (B, 3, 224, 224) float32, bilinear, mean = std = 0.5; decode included; "
            f"batches of {args.batch_size}; {args.rounds} interleaved rounds, one torch thread. "
            "Ratios compare CPU time round by round. *paths*: ViTImageProcessor given the file "
            "paths (it decodes with torchvision); *load_image + ViTImageProcessor*: what "
            '`pipeline("image-classification")` does; *ViTImageProcessorPil*: the PIL backend '
            "given the paths. Checked in the same run: vitkit fast equals ViTImageProcessor and "
            "vitkit pil equals ViTImageProcessorPil bit for bit; the two exact modes differ by at "
            f"most {differences['modes_max']:.3f}; `jpeg_draft` (approximate, opt-in) differs "
            f"from the exact path by up to {differences['draft_max']:.3f} "
            f"(mean {differences['draft_mean']:.4f}) after normalisation."
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--copies", type=int, default=8, help="files per sample photo")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()  # its torchvision-decode deprecation notice
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.copies)
        cpu, wall, differences = measure(
            contenders(paths, args.batch_size), args.rounds, len(paths)
        )
    print(f"wrote {publish(cpu, wall, differences, args, len(paths))}")


if __name__ == "__main__":
    main()
