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
the same run. ``--write`` replaces the "Preprocessing" section of BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_preprocess.py --rounds 9 --write
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import transformers
from PIL import Image

from vitkit.images.processor import ImageProcessor

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Preprocessing"
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
) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """(CPU-time, wall-time) images/s per contender, medians of interleaved rounds.

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
    differences = check_parity(outputs)
    rates = {
        name: (images / statistics.median(cpu[name]), images / statistics.median(wall[name]))
        for name in names
    }
    return rates, differences


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


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def table(
    rates: dict[str, tuple[float, float]],
    differences: dict[str, float],
    args: argparse.Namespace,
    images: int,
) -> str:
    paths_default = rates["transformers ViTImageProcessor (paths)"][0]
    pipeline_default = rates["transformers ViTImageProcessor (load_image + processor)"][0]
    pil_backend = rates["transformers ViTImageProcessorPil (paths)"][0]
    lines = [
        f"`benchmarks/bench_preprocess.py --rounds {args.rounds} --batch-size {args.batch_size}` "
        f"on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}, "
        f"torch.set_num_threads(1), one process; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, transformers {transformers.__version__}, Pillow "
        f"{PIL.__version__}, Python {platform.python_version()}.",
        "",
        f"{images} JPEG files, 640x480, quality 90, made from the six sample photos "
        "(skimage astronaut, coffee, chelsea, immunohistochemistry; sklearn china, flower); "
        "output (B, 3, 224, 224) float32, bilinear, mean = std = 0.5; decode included; batches "
        f"of {args.batch_size}; median of {args.rounds} interleaved rounds.",
        "",
        "| pipeline | images/s per core (CPU time) | images/s (wall) | vs default, paths "
        "| vs default, load_image + processor | vs PIL backend |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (rate, wall_rate) in rates.items():
        lines.append(
            f"| {name} | {rate:.0f} | {wall_rate:.0f} | {rate / paths_default:.2f}x "
            f"| {rate / pipeline_default:.2f}x | {rate / pil_backend:.2f}x |"
        )
    exact, draft = rates["vitkit fast"][0], rates["vitkit fast + jpeg_draft (approximate)"][0]
    decode = rates[RGBX_DECODE_ONLY][0]
    lines += [
        "",
        "Target (one core, decode included): >= 1.8x transformers' default processor and "
        f">= 3x its PIL backend. Exact fast path: {exact / paths_default:.2f}x (default given "
        f"paths) / {exact / pipeline_default:.2f}x (default after load_image) and "
        f"{exact / pil_backend:.2f}x (PIL backend). Approximate jpeg_draft: "
        f"{draft / paths_default:.2f}x / {draft / pipeline_default:.2f}x and "
        f"{draft / pil_backend:.2f}x.",
        "",
        "Which path the target measures: the issue's own figures for this machine were the "
        "default processor 252 images/s, its PIL backend 157, torchvision decode + resize 447 "
        "(1.77x: an exact torchvision pipeline falls short of 1.8x by the issue's own numbers) "
        "and PIL with JPEG draft-mode decoding 484 (1.92x and 3.08x). The 1.8x / 3x targets sit "
        "just under that last line, so they are met by vitkit's draft-decoding fast path "
        "(`--jpeg-draft`, `ImageProcessor(jpeg_draft=True)`), which runs libjpeg-turbo's reduced "
        "DCT scale as PIL's draft mode does. It stays opt-in because it changes pixels and so "
        "the model's numbers (the toolkit's first promise is the checkpoint authors' exact "
        "numbers); the default fast path is the exact one in the row above it.",
        "",
        f"Where the exact path's time goes: decoding the JPEG alone (libjpeg-turbo, the same "
        f"accurate IDCT the reference uses, here through simplejpeg into 4-byte RGBX pixels) "
        f"runs at {decode:.0f} images/s, {exact / decode:.0%} of the exact fast path's time; "
        "the rest is the uint8 antialiased resize (the reference's own kernel, which "
        "bit-exactness requires; RGBX input spares it a 3->4 channel copy) and one float pass "
        "for rescale+normalize. Even with resize and normalize free, an exact pipeline could "
        f"not beat the default-given-paths reference by more than {decode / paths_default:.2f}x "
        "here; only decoding less (jpeg_draft's reduced DCT scale) goes past that.",
    ]
    lines += [
        "",
        "Ratios use the CPU-time rates (one thread, so one core's busy time; the machine is "
        "shared, and wall time also counts waiting for a core). *default, paths*: "
        "ViTImageProcessor given the file paths, which it decodes itself with torchvision. "
        '*load_image + processor*: what `pipeline("image-classification")` does (PIL decode, '
        "then the processor). *PIL backend*: ViTImageProcessorPil given the paths (PIL decode). "
        "Outputs are checked in the same run: vitkit fast equals ViTImageProcessor and vitkit "
        "pil equals ViTImageProcessorPil bit for bit (max abs diff 0). The two exact modes differ "
        f"from each other by at most {differences['modes_max']:.3f} (PIL's resize arithmetic "
        "vs torch's). `jpeg_draft` is an explicit approximate option (off by default): JPEGs "
        "decoded at a reduced DCT scale; its output differs from the exact fast path by up to "
        f"{differences['draft_max']:.3f} (mean {differences['draft_mean']:.4f}) after "
        "normalisation, so it matches neither reference.",
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    content = path.read_text()
    pattern = re.compile(rf"({re.escape(SECTION)}\n)(.*?)(?=\n## |\Z)", re.S)
    if not pattern.search(content):
        raise SystemExit(f"{path} has no '{SECTION}' section")
    path.write_text(pattern.sub(lambda m: m.group(1) + "\n" + text, content, count=1))
    print(f"wrote the '{SECTION}' section of {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--copies", type=int, default=8, help="files per sample photo")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()  # its torchvision-decode deprecation notice
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.copies)
        rates, differences = measure(contenders(paths, args.batch_size), args.rounds, len(paths))
    text = table(rates, differences, args, len(paths))
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
