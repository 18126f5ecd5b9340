"""End-to-end: JPEG files on disk -> top-5 labels, vitkit vs transformers' pipeline, same model.

The same HF checkpoint directory (ViT-B/16-224 with seeded random weights and 1000 labels, or
--model DIR, e.g. the fine-tuned demo model) is loaded by ``vitkit.load`` and by
``transformers.pipeline("image-classification")``. Both classify the same files, 8 per batch,
from path to top-5 {label, score}: decode, preprocess, forward, softmax, top-k. Files: the real
photos bundled with scikit-image and scikit-learn, each saved as JPEG at its own size and as
resized copies at 640x480 and 2000x1500.

Contenders run interleaved in one process (order rotated each round), median over rounds;
the speed-up column is the median of per-round time ratios. vitkit runs fp32 and int8
(``vitkit.load(..., precision="int8")``); the pipeline runs fp32 with its default processor.

    .venv/bin/python benchmarks/bench_end_to_end.py --rounds 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import vitkit
from results_io import write_report
from vitkit.bench.contenders import weight_bytes
from vitkit.bench.sample_data import real_photos
from vitkit.bench.timing import Contender, run_interleaved
from vitkit.inference import runtime

SIZES = {"original": None, "640x480": (640, 480), "2000x1500": (2000, 1500)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_checkpoint(directory: Path) -> Path:
    """ViT-B/16-224, seeded random weights, LayerNorm eps 1e-6, ImageNet labels, HF layout."""
    from vitkit.checkpoints import imagenet_labels, save_pretrained
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    labels = dict(enumerate(imagenet_labels()))
    model = ViT(preset("vit-base-patch16-224", id2label=labels, layer_norm_eps=1e-6)).eval()
    save_pretrained(model, directory)
    return directory


def make_jpegs(directory: Path, count: int) -> dict[str, list[str]]:
    """``count`` JPEG files per size from the bundled photos (distinct crops of each photo):
    at the crop's own size, and resized to 640x480 and 2000x1500; one folder per size."""
    import random

    from PIL import Image

    photos = [Image.fromarray(pixels) for pixels in real_photos()]
    files: dict[str, list[str]] = {}
    for name, size in SIZES.items():
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        chooser = random.Random(0)  # the same crops for every size
        files[name] = []
        for index in range(count):
            photo = photos[index % len(photos)]
            scale = 1.0 if index < len(photos) else chooser.uniform(0.6, 0.95)
            width, height = int(photo.width * scale), int(photo.height * scale)
            left = chooser.randint(0, photo.width - width)
            top = chooser.randint(0, photo.height - height)
            image = photo.crop((left, top, left + width, top + height))
            if size is not None:
                image = image.resize(size, Image.BICUBIC)
            path = folder / f"photo_{index:02d}.jpg"
            image.save(path, quality=90)
            files[name].append(str(path))
    return files


def contenders(model_dir: Path, batch_size: int, against_pipeline: bool) -> list[Contender]:
    from vitkit.bench.contenders import logits_path_flops

    fp32 = vitkit.load(model_dir, device="cpu")
    int8 = vitkit.load(model_dir, device="cpu", precision="int8")
    flops = logits_path_flops(fp32.model)
    for classifier in (fp32, int8):  # every contender runs on the thread count set in main()
        classifier._forward.threads = None

    def vitkit_run(classifier: Any) -> Any:
        return lambda paths: classifier.predict(paths, top_k=5, batch_size=batch_size)

    result = [
        Contender("vitkit fp32", vitkit_run(fp32), flops, weight_bytes(fp32.model)),
        Contender("vitkit int8", vitkit_run(int8), flops, weight_bytes(int8._forward.model)),
    ]
    if against_pipeline:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        pipe = transformers.pipeline("image-classification", model=str(model_dir), device="cpu")
        full = float(fp32.model.flops_per_image())
        result.append(
            Contender(
                "transformers pipeline",
                lambda paths: pipe(paths, top_k=5, batch_size=batch_size),
                full,
                weight_bytes(pipe.model),
            )
        )
    return result


def same_top1(classifier_out: list[Any], pipeline_out: list[Any]) -> float:
    pairs = zip(classifier_out, pipeline_out, strict=True)
    return sum(a[0]["label"] == b[0]["label"] for a, b in pairs) / len(classifier_out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default=None, help="HF checkpoint directory (default: ViT-B/16 random)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", default="auto", help="a number or auto")
    parser.add_argument("--sizes", default="original,640x480,2000x1500")
    parser.add_argument("--files", type=int, default=24, help="JPEG files per size (default 24)")
    args = parser.parse_args()
    runtime.tune_cpu_allocator()
    work = Path(tempfile.mkdtemp(prefix="vitkit-e2e-"))
    model_dir = Path(args.model) if args.model else make_checkpoint(work / "vit-b16")
    files = make_jpegs(work / "jpegs", args.files)
    racers = contenders(model_dir, args.batch_size, against_pipeline=True)
    for size in args.sizes.split(","):
        paths = files[size]
        model = vitkit.load(model_dir, device="cpu").model
        threads = (
            runtime.auto_threads(args.batch_size, model)
            if args.threads == "auto"
            else int(args.threads)
        )
        with runtime.num_threads(threads):
            agreement = same_top1(racers[0].forward(paths), racers[2].forward(paths))
            report = run_interleaved(
                racers,
                paths,
                rounds=args.rounds,
                repeats=args.repeats,
                warmup=1,
                measure_memory=False,
                title=(
                    f"End-to-end, {len(paths)} JPEG files ({size}) -> top-5 in batches of "
                    f"{args.batch_size} (one timed call = all files)"
                ),
                log=log,
            )
        path = write_report(
            f"end_to_end_{size.replace('x', '_')}",
            title=f"JPEG files ({size}) to top-5 labels, in-process: vitkit against transformers' pipeline",
            report=report,
            base=racers[0].name,
            notes=(
                f"{len(paths)} JPEG files per timed call, batches of {args.batch_size}, "
                f"{threads} torch thread(s); vitkit fp32 and the pipeline agree on the top-1 "
                f"label of {100 * agreement:.0f}% of the files."
            ),
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
