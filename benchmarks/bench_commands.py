"""Whole-process timings: `vitkit predict` / `vitkit embed` against the scripts users write instead.

Every contender is a separate process started from scratch, as a user runs it: interpreter
start, imports, model load, decoding, preprocessing, forward, output. Contenders run
interleaved (the order rotates every round); each gets the wall time, the CPU time (user + sys
of the process and its children, from wait4) and the peak RSS. The table shows medians and the
min-max range; the speed-up is, round by round, the best peer's wall time over the contender's.
Writes benchmarks/results/commands.json.

Contenders, all on the same checkpoint (ViT-B/16-224 with seeded random weights, 1000 labels)
and the same JPEG files (640x480 crops of the photos bundled with scikit-image / scikit-learn):

- predict: `vitkit predict --model DIR --top-k 5 --format json FOLDER` (fp32 and
  `--precision int8`); a transformers script (`pipeline("image-classification")` on the file
  list, batch_size=8); a timm script (`timm.create_model(..., checkpoint_path=...)`, timm's eval
  transform, batches of 8 under `torch.inference_mode`).
- embed: `vitkit embed --model DIR --out X.npy FOLDER` (fp32, int8); a transformers script
  (`AutoImageProcessor` + `AutoModel`, [CLS] of `last_hidden_state`, batches of 8); a timm script
  (`num_classes=0`, batches of 8).
- start-up: `vitkit --help`, `python -c "import torch"`, and `vitkit predict` on one image.

    .venv/bin/python benchmarks/bench_commands.py --images 16,256 --rounds 5
    .venv/bin/python benchmarks/bench_commands.py --quick    # tiny model, 4 images: a smoke run
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from results_io import median_spread, spread, write_results

PEER_SCRIPTS = {
    "transformers_predict.py": """
        import json, sys
        from pathlib import Path
        from transformers import pipeline

        classify = pipeline("image-classification", model=sys.argv[1], device="cpu")
        files = sorted(str(p) for p in Path(sys.argv[2]).glob("*.jpg"))
        print(json.dumps(classify(files, top_k=5, batch_size=8)))
    """,
    "timm_predict.py": """
        import json, sys
        from pathlib import Path
        import timm, torch
        from PIL import Image

        model = timm.create_model(sys.argv[3], checkpoint_path=sys.argv[1]).eval()
        transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
        files = sorted(Path(sys.argv[2]).glob("*.jpg"))
        results = []
        with torch.inference_mode():
            for start in range(0, len(files), 8):
                batch = torch.stack(
                    [transform(Image.open(f).convert("RGB")) for f in files[start : start + 8]]
                )
                scores, classes = model(batch).softmax(-1).topk(5)
                results += [list(zip(c.tolist(), s.tolist())) for c, s in zip(classes, scores)]
        print(json.dumps(results))
    """,
    "transformers_embed.py": """
        import sys
        from pathlib import Path
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModel

        processor = AutoImageProcessor.from_pretrained(sys.argv[1])
        model = AutoModel.from_pretrained(sys.argv[1], add_pooling_layer=False).eval()
        files = sorted(Path(sys.argv[2]).glob("*.jpg"))
        parts = []
        with torch.inference_mode():
            for start in range(0, len(files), 8):
                images = [Image.open(f).convert("RGB") for f in files[start : start + 8]]
                inputs = processor(images=images, return_tensors="pt")
                parts.append(model(**inputs).last_hidden_state[:, 0].numpy())
        np.save(sys.argv[3], np.concatenate(parts))
    """,
    "timm_embed.py": """
        import sys
        from pathlib import Path
        import numpy as np, timm, torch
        from PIL import Image

        model = timm.create_model(sys.argv[4], num_classes=0)
        state = timm.models.load_state_dict(sys.argv[1])
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
        model.eval()
        transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
        files = sorted(Path(sys.argv[2]).glob("*.jpg"))
        parts = []
        with torch.inference_mode():
            for start in range(0, len(files), 8):
                batch = torch.stack(
                    [transform(Image.open(f).convert("RGB")) for f in files[start : start + 8]]
                )
                parts.append(model(batch).numpy())
        np.save(sys.argv[3], np.concatenate(parts))
    """,
}


@dataclass
class Contender:
    name: str
    command: list[str]
    peer: bool = False  # a script users would write instead (the speed-up's reference)


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall s, CPU s of the process tree, peak RSS MB) of one run; a failure stops the bench."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    stderr = process.stderr.read() if process.stderr else ""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def make_inputs(work: Path, preset: str, counts: list[int]) -> tuple[Path, Path, dict[int, Path]]:
    """HF checkpoint dir, the same weights as a timm state dict, and a JPEG folder per count."""
    import torch
    from safetensors.torch import save_file

    from vitkit.bench.sample_data import real_photos
    from vitkit.checkpoints import imagenet_labels, save_pretrained
    from vitkit.models.config import preset as vit_preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    labels = dict(enumerate(imagenet_labels()))
    model = ViT(vit_preset(preset, id2label=labels, layer_norm_eps=1e-6)).eval()
    hf_dir = save_pretrained(model, work / "model")
    timm_file = work / "model_timm.safetensors"  # vitkit's parameter names are timm's
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(timm_file))
    photos = [Image.fromarray(pixels) for pixels in real_photos()]
    folders = {}
    for count in counts:
        folder = work / f"jpegs_{count}"
        folder.mkdir()
        for index in range(count):
            photo = photos[index % len(photos)]
            box = _crop_box(photo.size, index)
            photo.crop(box).resize((640, 480), Image.BICUBIC).save(
                folder / f"{index:04d}.jpg", quality=90
            )
        folders[count] = folder
    return hf_dir, timm_file, folders


def _crop_box(size: tuple[int, int], index: int) -> tuple[int, int, int, int]:
    width, height = size
    shrink = 0.6 + 0.4 * ((index * 37) % 100) / 100
    crop_w, crop_h = int(width * shrink), int(height * shrink)
    left = (index * 53) % (width - crop_w + 1)
    top = (index * 29) % (height - crop_h + 1)
    return left, top, left + crop_w, top + crop_h


def contenders(
    task: str, hf_dir: Path, timm_file: Path, folder: Path, scripts: Path, timm_name: str
) -> list[Contender]:
    python, vitkit = sys.executable, [sys.executable, "-m", "vitkit"]
    out = folder.parent / f"out_{task}.npy"
    if task == "predict":
        ours = [*vitkit, "predict", "--model", str(hf_dir), "--top-k", "5", "--format", "json"]
        peers = [
            Contender(
                "transformers pipeline script",
                [python, str(scripts / "transformers_predict.py"), str(hf_dir), str(folder)],
                peer=True,
            ),
            Contender(
                "timm script",
                [
                    python,
                    str(scripts / "timm_predict.py"),
                    str(timm_file),
                    str(folder),
                    timm_name,
                ],
                peer=True,
            ),
        ]
        tail = [str(folder)]
    else:
        ours = [*vitkit, "embed", "--model", str(hf_dir), "--out", str(out)]
        peers = [
            Contender(
                "transformers AutoModel script",
                [
                    python,
                    str(scripts / "transformers_embed.py"),
                    str(hf_dir),
                    str(folder),
                    str(out),
                ],
                peer=True,
            ),
            Contender(
                "timm script",
                [
                    python,
                    str(scripts / "timm_embed.py"),
                    str(timm_file),
                    str(folder),
                    str(out),
                    timm_name,
                ],
                peer=True,
            ),
        ]
        tail = [str(folder)]
    return [
        Contender(f"vitkit {task} fp32", [*ours, *tail]),
        Contender(f"vitkit {task} int8", [*ours, "--precision", "int8", *tail]),
        *peers,
    ]


def startup_contenders(hf_dir: Path, one_image: Path) -> list[Contender]:
    vitkit = [sys.executable, "-m", "vitkit"]
    return [
        Contender("vitkit --help", [*vitkit, "--help"]),
        Contender("vitkit predict --help", [*vitkit, "predict", "--help"]),
        Contender('python -c "import torch"', [sys.executable, "-c", "import torch"], peer=True),
        Contender(
            "vitkit predict, one image",
            [*vitkit, "predict", "--model", str(hf_dir), "--format", "json", str(one_image)],
        ),
    ]


def measure(racers: list[Contender], rounds: int, env: dict[str, str]) -> dict[str, Timings]:
    timings = {racer.name: Timings() for racer in racers}
    for racer in racers:  # warm-up: page cache, .pyc files
        run_once(racer.command, env)
    for round_index in range(rounds):
        order = racers[round_index % len(racers) :] + racers[: round_index % len(racers)]
        for racer in order:
            wall, cpu, rss = run_once(racer.command, env)
            timing = timings[racer.name]
            timing.wall.append(wall)
            timing.cpu.append(cpu)
            timing.rss_mb.append(rss)
            log(f"  round {round_index + 1}: {racer.name}: {wall:.2f}s wall, {cpu:.2f}s CPU")
    return timings


def rows_of(
    title: str, racers: list[Contender], timings: dict[str, Timings], speedups: dict[str, dict]
) -> list[list[str]]:
    """One table row per contender; the speed-up is each round's best-peer wall time over the
    contender's in the same round (the load drifts between rounds), median and range. The
    speed-ups also go into ``speedups`` ("JOB: CONTENDER" -> spread), the results' summary."""
    peers = [r for r in racers if r.peer]
    best = min(peers, key=lambda p: statistics.median(timings[p.name].wall), default=None)
    rows = []
    for racer in racers:
        t = timings[racer.name]
        speedup = ""
        if best is not None and not racer.peer:
            ratios = [
                theirs / mine for theirs, mine in zip(timings[best.name].wall, t.wall, strict=True)
            ]
            speedup = f"{median_spread(ratios)}x vs {best.name}"
            speedups[f"{title}: {racer.name}"] = {**spread(ratios), "against": best.name}
        rows.append(
            [
                title,
                racer.name,
                median_spread(t.wall),
                f"{statistics.median(t.cpu):.2f}",
                f"{statistics.median(t.rss_mb):.0f}",
                speedup,
            ]
        )
    return rows


def publish(
    args: argparse.Namespace, rows: list[list[str]], rounds: list[dict], speedups: dict[str, dict]
) -> Path:
    return write_results(
        "commands",
        title="Whole commands: `vitkit predict` / `vitkit embed` against the scripts users write",
        command="python benchmarks/bench_commands.py " + shlex.join(sys.argv[1:]),
        summary={"rounds": args.rounds, "preset": args.preset, "speedups": speedups},
        rounds=rounds,
        table={
            "columns": [
                "job",
                "contender",
                "wall s, median (min-max)",
                "CPU s, median",
                "peak RSS MB",
                "speed-up, per round (median, min-max)",
            ],
            "rows": rows,
        },
        notes=(
            "Every contender is a fresh process, as a user runs it: interpreter start, imports, "
            "model load, decoding, preprocessing, forward, output. The same checkpoint "
            f"({args.preset}, seeded random weights, 1000 labels) and the same 640x480 JPEG crops "
            "of the photos bundled with scikit-image / scikit-learn for every contender; peers "
            "are a transformers `pipeline` script and a timm script (batches of 8). "
            f"{args.rounds} interleaved rounds, the order turned each round, after one warm-up "
            "run of each."
        ),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="16,256", help="image counts, comma-separated")
    parser.add_argument("--tasks", default="startup,predict,embed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--preset", default="vit-base-patch16-224")
    parser.add_argument("--timm-name", default="vit_base_patch16_224")
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 images, 1 round")
    parser.add_argument("--make-inputs", help=argparse.SUPPRESS)  # internal: the child's job
    args = parser.parse_args()
    if args.make_inputs:
        make_inputs(Path(args.make_inputs), args.preset, [int(n) for n in args.images.split(",")])
        return 0
    if args.quick:
        args.images, args.rounds = "4", 1
        args.preset, args.timm_name = "vit-tiny-patch16-224", "vit_tiny_patch16_224"
    counts = [int(n) for n in args.images.split(",")]
    work = Path(tempfile.mkdtemp(prefix="vitkit-commands-"))
    scripts = work / "scripts"
    scripts.mkdir()
    for name, code in PEER_SCRIPTS.items():
        (scripts / name).write_text(textwrap.dedent(code).lstrip())
    # This process never imports torch: a child's peak RSS (wait4) starts from its parent's
    # RSS at fork, so a 1 GB parent would make every contender look 1 GB heavy.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    maker = [sys.executable, __file__, "--make-inputs", str(work), "--images", args.images]
    subprocess.run([*maker, "--preset", args.preset], env=env, check=True)
    hf_dir, timm_file = work / "model", work / "model_timm.safetensors"
    folders = {count: work / f"jpegs_{count}" for count in counts}
    rows: list[list[str]] = []
    rounds: list[dict] = []
    speedups: dict[str, dict] = {}
    for task in args.tasks.split(","):
        jobs: list[tuple[str, list[Contender]]] = []
        if task == "startup":
            one = next(folders[counts[0]].glob("*.jpg"))
            jobs.append(("start-up", startup_contenders(hf_dir, one)))
        else:
            for count in counts:
                racers = contenders(
                    task, hf_dir, timm_file, folders[count], scripts, args.timm_name
                )
                jobs.append((f"`{task}`, {count} JPEGs", racers))
        for title, racers in jobs:
            log(f"{title}: {len(racers)} contenders x {args.rounds} rounds")
            timings = measure(racers, args.rounds, env)
            rows += rows_of(title, racers, timings, speedups)
            for name, timing in timings.items():
                rounds.append({"job": title, "contender": name, **vars(timing)})
    print(f"wrote {publish(args, rows, rounds, speedups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
