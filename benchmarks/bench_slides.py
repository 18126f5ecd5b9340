"""`vitkit slide` on a generated gigapixel slide: tiles/s against the model alone and against
WSInfer-style reading, and peak memory at two slide sizes.

The slides are written tile by tile (never a whole level in memory) into a temporary folder:
JPEG-compressed (quality 80, YCbCr 4:2:0, as scanners store them) 256-px tiles of a tiled
pyramidal BigTIFF, levels at 1, 1/4 and 1/16, 0.25 µm/px. The tissue is scikit-image's
immunohistochemistry sample (real histology), repeated into rounded "cores" laid out on white
glass with gaps, about a third of the slide.

Contenders, each in its own process (so its peak RSS is its own), all running the same model on
the same tissue tiles in the same batches of 32 (224 px tiles at ``--mpp``, default 1.0 µm/px:
level 1 of the pyramid, read as is):

- ``vitkit``: ``vitkit.slides.run_slide`` end to end (plan, threaded reading, model, every output);
- ``vitkit (openslide)``: the same with OpenSlide as the reader;
- ``model alone``: the same batches read first (untimed), then only ``Classifier.probabilities``
  timed: the ceiling for the end-to-end rate;
- ``naive``: WSInfer-style: one OpenSlide ``read_region`` per tile in the main thread, then the
  same preprocessing and model, one batch after the other.

The model is a ViT-Ti/16 (random weights: speed does not depend on them), small enough for the
benchmark to run in minutes on 2 cores, large enough that reading is the smaller share.

    .venv/bin/python benchmarks/bench_slides.py                  # 40k and 20k slides, 1 round
    .venv/bin/python benchmarks/bench_slides.py --sizes 40000 --rounds 3 --mpp 0.25
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from results_io import median_spread, spread, write_results

ROOT = Path(__file__).resolve().parents[1]
STORE_TILE = 256
MPP = 0.25
DOWNSAMPLES = (1, 4, 16)
CORE = 2600  # side of a tissue core, level-0 pixels
CELL = 3400  # cores sit on this grid, some cells empty
BATCH = 32
TILE = 224
CONTENDERS = ["vitkit", "model-alone", "naive", "vitkit-openslide"]


# ---- the slide ----------------------------------------------------------------------------------
class Layout:
    """Where tissue is: rounded cores of the histology sample on a grid, some cells left empty."""

    def __init__(self, size: int) -> None:
        from PIL import Image
        from skimage import data

        self.size = size
        photo = data.immunohistochemistry()
        # Mirrored copies side by side, so the repeat has no seams.
        tile = np.concatenate([photo, photo[:, ::-1]], axis=1)
        tile = np.concatenate([tile, tile[::-1]], axis=0)
        self.photos = {
            d: np.asarray(Image.fromarray(tile).reduce(d)) if d > 1 else tile for d in DOWNSAMPLES
        }
        cells = math.ceil(size / CELL)
        rng = np.random.default_rng(0)
        self.cores = [
            (col * CELL + 300, row * CELL + 300)
            for row in range(cells)
            for col in range(cells)
            if rng.random() < 0.6
        ]

    def region(self, downsample: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB pixels of a region of the level with this downsample (level coordinates)."""
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        photo = self.photos[downsample]
        core = CORE // downsample
        for cx, cy in self.cores:
            left, top = cx // downsample, cy // downsample
            x0, x1 = max(x, left), min(x + width, left + core)
            y0, y1 = max(y, top), min(y + height, top + core)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            inside = (yy - top - core / 2) ** 2 + (xx - left - core / 2) ** 2 < (core / 2) ** 2
            pixels = photo[(yy - top) % photo.shape[0], (xx - left) % photo.shape[1]]
            target = out[y0 - y : y1 - y, x0 - x : x1 - x]
            target[inside] = pixels[inside]
        return out


def write_slide(path: Path, size: int) -> Path:
    """A JPEG-tiled pyramidal BigTIFF, tile by tile. The tiles are JPEG-encoded here (simplejpeg)
    and written as they are; the Compression tag is set afterwards (tifffile's own JPEG encoder
    needs imagecodecs)."""
    import simplejpeg
    import tifffile

    layout = Layout(size)
    white: dict[int, bytes] = {}

    def tiles(downsample: int, width: int, height: int):
        for top in range(0, height, STORE_TILE):
            for left in range(0, width, STORE_TILE):
                pixels = layout.region(downsample, left, top, STORE_TILE, STORE_TILE)
                if pixels.min() == 255:  # glass: the same bytes every time
                    if downsample not in white:
                        white[downsample] = simplejpeg.encode_jpeg(pixels, quality=80)
                    yield white[downsample]
                else:
                    yield simplejpeg.encode_jpeg(pixels, quality=80, colorsubsampling="420")

    tmp = path.with_suffix(".partial.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tiff:
        for index, downsample in enumerate(DOWNSAMPLES):
            width = height = size // downsample
            per_cm = 1e4 / (MPP * downsample)
            tiff.write(
                tiles(downsample, width, height),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(STORE_TILE, STORE_TILE),
                photometric="rgb",
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if index else 0,
                metadata=None,
            )
    with tifffile.TiffFile(tmp, mode="r+b") as tiff:
        for page in tiff.pages:
            page.tags["Compression"].overwrite(7)  # JPEG
            page.tags["PhotometricInterpretation"].overwrite(6)  # YCbCr
    os.replace(tmp, path)
    return path


def make_model(folder: Path) -> Path:
    import vitkit
    from vitkit.checkpoints import save_model
    from vitkit.models.config import preset

    if not (folder / "config.json").exists():
        config = preset("vit-tiny-patch16-224", num_labels=4).replace(
            id2label={0: "tumour", 1: "stroma", 2: "immune", 3: "other"}
        )
        save_model(vitkit.ViT(config).eval(), folder)
    return folder


# ---- the contenders (each runs in a child process) ---------------------------------------------
def child(mode: str, slide: Path, model: Path, out: Path, mpp: float) -> dict[str, Any]:
    import vitkit
    from vitkit.inference.runtime import tune_process_for_inference
    from vitkit.slides import SlideSettings, open_slide, plan_slide, run_slide
    from vitkit.slides.stream import tile_preparer

    tune_process_for_inference("cpu")
    classifier = vitkit.load(model, device="cpu", threads="auto")  # as `vitkit slide` runs
    reader_name = "openslide" if mode in ("vitkit-openslide", "naive") else "auto"
    settings = SlideSettings(batch_size=BATCH, reader=reader_name, mpp=mpp)
    if mode.startswith("vitkit"):
        started = time.perf_counter()
        result = run_slide(slide, classifier, out, settings)
        whole = time.perf_counter() - started  # planning and writing the outputs included
        return {"tiles": result.tiles, "seconds": result.seconds, "whole_call_seconds": whole}
    with open_slide(slide, reader_name) as reader:
        plan = plan_slide(reader, TILE, settings)
        level, size, scale = plan.geometry.level, plan.geometry.read_size, plan.geometry.downsample
        prepare = tile_preparer(classifier)
        seconds = 0.0
        started = time.perf_counter()
        for start in range(0, len(plan), BATCH):
            indices = range(start, min(start + BATCH, len(plan)))
            if mode == "naive":  # OpenSlide itself, level-0 coordinates, as WSInfer calls it
                handle = reader._slide  # type: ignore[attr-defined]
                tiles = [
                    np.array(
                        handle.read_region(
                            (round(plan.x[i] * scale), round(plan.y[i] * scale)),
                            level,
                            (size, size),
                        ).convert("RGB")
                    )
                    for i in indices
                ]
                classifier.probabilities(prepare(tiles))
                continue
            tiles = [
                reader.read(level, int(plan.x[i]), int(plan.y[i]), size, size) for i in indices
            ]
            pixels = prepare(tiles)
            tick = time.perf_counter()
            classifier.probabilities(pixels)
            seconds += time.perf_counter() - tick
        if mode == "naive":
            seconds = time.perf_counter() - started
    return {"tiles": len(plan), "seconds": seconds}


def run_child(mode: str, slide: Path, model: Path, out: Path, mpp: float) -> dict[str, Any]:
    """The contender in its own process; its result plus its own peak RSS."""
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        str(slide),
        str(model),
        str(out),
        str(mpp),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    stdout = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{mode} failed ({process.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
    result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)  # the whole process
    result["tiles_per_second"] = round(result["tiles"] / result["seconds"], 2)
    return result


# ---- the report ----------------------------------------------------------------------------------
LABELS = {
    "model-alone": "model alone (same batches read beforehand; only the model timed)",
    "vitkit": "**vitkit** (`run_slide`, tifffile reader, 2 reading threads)",
    "vitkit-openslide": "vitkit, OpenSlide reader",
    "naive": "naive, WSInfer-style: one OpenSlide `read_region` per tile, main thread",
}
NOTES = (
    "A generated JPEG-tiled pyramidal BigTIFF (256-px tiles, levels 1, 1/4, 1/16, 0.25 µm/px); "
    "tissue = rounded cores of scikit-image's immunohistochemistry sample on white glass. Every "
    "contender runs ViT-Ti/16 (random weights, 224 px, fp32) on the same tissue tiles "
    "(`--mpp 1.0`) in batches of 32, each in its own process (peak RSS is its own); contender "
    "order turns each round and ratios are to the model alone in the same round. tiles/s time "
    "the tile loop (read + preprocess + model); planning and writing every output are in "
    "`whole_call_seconds` in the results file."
)


def publish(runs: list[dict[str, Any]], command: str) -> Path:
    """Write benchmarks/results/slides.json: tiles/s and the ratio to the model alone per
    contender (each round's ratio: the load drifts between rounds), and peak RSS per size."""
    first = max(run["size"] for run in runs)
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if run["size"] == first:
            by_round.setdefault(run["round"], {})[run["mode"]] = run["tiles_per_second"]
    rows, summary = [], {}
    for mode in ["model-alone", "vitkit", "vitkit-openslide", "naive"]:
        mine = [run for run in runs if run["size"] == first and run["mode"] == mode]
        if not mine:
            continue
        ratios = [
            rates[mode] / rates["model-alone"] for rates in by_round.values() if mode in rates
        ]
        rss = [run["peak_rss_mb"] for run in mine]
        rows.append(
            [
                LABELS[mode],
                median_spread([run["tiles_per_second"] for run in mine]),
                median_spread(ratios),
                f"{min(rss)}-{max(rss)}",
            ]
        )
        summary[f"{mode}_ratio"] = spread(ratios)
    for size in sorted({run["size"] for run in runs}):
        rss = [
            run["peak_rss_mb"] for run in runs if run["size"] == size and run["mode"] == "vitkit"
        ]
        summary[f"vitkit_peak_rss_mb_{size}"] = max(rss)
    summary["rounds"] = len(by_round)
    summary["tiles"] = runs[0]["tiles"]
    return write_results(
        "slides",
        title="Whole slides: `vitkit slide` tile loop against the model alone",
        command=command,
        summary=summary,
        rounds=runs,
        table={
            "columns": [
                f"contender ({first // 1000}k-pixel slide, {runs[0]['tiles']} tiles)",
                "tiles/s (median, min-max)",
                "ratio to model alone (median, min-max)",
                "peak RSS MB",
            ],
            "rows": rows,
        },
        notes=NOTES
        + " vitkit's peak RSS per slide size (MB): "
        + ", ".join(
            f"{size // 1000}k: {summary[f'vitkit_peak_rss_mb_{size}']}"
            for size in sorted({run["size"] for run in runs})
        )
        + ".",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=5, metavar=("MODE", "SLIDE", "MODEL", "OUT", "MPP"))
    parser.add_argument(
        "--mpp",
        type=float,
        default=1.0,
        help="resolution to run at (default 1.0 µm/px: level 1, 10x; 0.25 is level 0)",
    )
    parser.add_argument("--sizes", default="40000,20000", help="slide sides (level 0 pixels)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "vitkit-bench-slides"
    )
    args = parser.parse_args()
    if args.child:
        mode, slide, model, out, mpp = args.child
        print(json.dumps(child(mode, Path(slide), Path(model), Path(out), float(mpp))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    model = make_model(args.work / "vit-tiny")
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: list[dict[str, Any]] = []
    for size in sizes:
        slide = args.work / f"slide-{size}.tif"
        if not slide.exists():
            started = time.perf_counter()
            write_slide(slide, size)
            print(
                f"wrote {slide} ({slide.stat().st_size / 1e6:.0f} MB) in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
        for round_ in range(args.rounds):
            # every contender once per round, the order turned each round (the load drifts)
            modes = CONTENDERS[round_ % 4 :] + CONTENDERS[: round_ % 4]
            for mode in modes if size == sizes[0] else ["vitkit"]:
                out = args.work / f"out-{size}-{mode}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                result = run_child(mode, slide, model, out, args.mpp)
                result.update(size=size, mode=mode, round=round_)
                runs.append(result)
                print(json.dumps(result), flush=True)
    print(f"wrote {publish(runs, ' '.join(['python', *sys.argv]))}")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
