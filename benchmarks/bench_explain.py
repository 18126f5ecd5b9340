"""Where the time of one POST /v1/explain goes, stage by stage, against a plain prediction.

In-process (no server, no network): a real photo (scikit-image "chelsea", 451x300 JPEG) through
the same functions the service runs: JPEG decode, the display copy for the overlay, the
checkpoint's preprocessing, the batch-1 forward pass for /v1/predict (fused attention) and for
/v1/explain (attention weights of every layer materialised, both maps), then drawing and encoding
the PNG overlay. Random-weight models: timings do not depend on the weights. Stages are
interleaved round by round, so background load hits them alike; medians are reported.

    python benchmarks/bench_explain.py --preset vit-tiny-patch16-224 --rounds 21
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from results_io import median_spread, spread, write_results


def photo() -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(data.chelsea())).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit-tiny-patch16-224")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vitkit.images.decode import load_image
    from vitkit.inference.classifier import Classifier
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT
    from vitkit.serve.explain import display_copy, overlay_png, run_explain

    torch.manual_seed(0)
    labels = {i: f"class {i}" for i in range(1000)}
    classifier = Classifier(ViT(preset(args.preset, id2label=labels)), name=args.preset)
    data = photo()
    image = load_image(io.BytesIO(data))
    shown = display_copy(image)
    pixels = classifier.prepare([image])
    attention_map = run_explain(classifier, pixels, 5)[0].maps["rollout"]
    stages: dict[str, Callable[[], Any]] = {
        "JPEG decode (load_image)": lambda: load_image(io.BytesIO(data)),
        "display copy (longer side 512)": lambda: display_copy(image),
        "preprocess": lambda: classifier.prepare([image]),
        "forward + top-5 (/v1/predict)": lambda: classifier.predict_tensor(pixels, 5),
        "forward with attention + maps (/v1/explain)": lambda: run_explain(classifier, pixels, 5),
        "overlay draw + PNG encode": lambda: overlay_png(shown, attention_map),
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    for stage in stages.values():  # warm-up
        stage()
    for _ in range(args.rounds):
        for name, stage in stages.items():
            start = time.perf_counter()
            stage()
            times[name].append(time.perf_counter() - start)
    png = overlay_png(shown, attention_map)
    path = write_results(
        "explain",
        title="`POST /v1/explain`: where the time goes",
        command="python benchmarks/bench_explain.py " + " ".join(sys.argv[1:]),
        summary={name: spread([1000 * v for v in values]) for name, values in times.items()},
        rounds=[{"stage": name, "seconds": values} for name, values in times.items()],
        table={
            "columns": ["stage", "ms (median, min-max)"],
            "rows": [
                [name, median_spread([1000 * v for v in values], 1)]
                for name, values in times.items()
            ],
        },
        notes=(
            f"{args.preset}, random weights, batch 1, {torch.get_num_threads()} torch threads, "
            f"{args.rounds} interleaved rounds on one photo; the overlay PNG is "
            f"{shown.width}x{shown.height}, {len(png):,} bytes."
        ),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
