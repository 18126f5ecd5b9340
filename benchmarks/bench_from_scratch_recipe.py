"""Does ``--from-scratch`` train a small ViT on a few thousand 28x28 images: the recipe it had
(a linear patch embedding) against the one it has now, over three seeds, on two real data sets.

Usage (one call writes benchmarks/results/from_scratch_recipe.json; two worker processes of one
torch thread each use the two cores the goal names):

    python benchmarks/bench_from_scratch_recipe.py                      # the committed table
    python benchmarks/bench_from_scratch_recipe.py --data fashion-mnist --seeds 0 --jobs 1

Data (real, offline), 10 classes at 28x28, one class cut short:

- ``fashion-mnist``: Debian's Fashion-MNIST, 440 training images per class but bag (50), 4,010 in
  all (10% of them validate: 3,609 train / 401 validation); tested on 100 images per class of the
  official test file;
- ``digits``: scikit-learn's 1,797 8x8 digits upscaled bicubically to 28x28, a stratified 20%
  tested (359), class 8 cut to 10% of its training images (the counts are in every round).

Model: a 4-block ViT at width 64 (4 heads, MLP 128), patch 4 (49 tokens), ``--model-arg`` as a
user passes them (``--model tiny``: ViT-Tiny's width 192, nine times the arithmetic). Every run:
15 epochs, oversampling, the test macro-F1 of the best epoch (lowest validation loss). Recipes
(what ``--from-scratch`` does when these settings are left unset):

- ``before``: the recipe before the convolutional stem: linear patch embedding, AdamW lr 2e-3,
  weight decay 0.05, 10% warm-up, label smoothing 0.1, no augmentation, batch 64;
- the others: see ``RECIPES``; ``DEFAULT_RECIPE`` is vitkit's from-scratch default (``main``
  checks it before running, or the table would lie).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from results_io import goal_verdict, write_results

NAME = "from_scratch_recipe"
EPOCHS = 15
PRESET = "vit-tiny-patch4-28"
MODELS = {
    "small": {
        "num_hidden_layers": 4,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    },
    "tiny": {"num_hidden_layers": 4},  # ViT-Tiny: width 192, 3 heads, MLP 768
}
# Every recipe names all the settings it compares, so a change of vitkit's defaults cannot
# change a row silently.
BEFORE: dict[str, Any] = {
    "patch_embed": "linear",
    "optimizer": "adamw",
    "lr": 2e-3,
    "warmup_fraction": 0.1,
    "label_smoothing": 0.1,
    "augment": "none",
    "mix": "none",
    "batch_size": 64,
}
RECIPES: dict[str, dict[str, Any]] = {
    "before": BEFORE,
    "conv-stem": {**BEFORE, "patch_embed": "conv"},
}
RECIPE_SETTINGS = tuple(BEFORE)
DEFAULT_RECIPE = "conv-stem"
GOAL = 0.80  # test macro-F1 on Fashion-MNIST's ~4,000 images, 15 epochs, 2 cores


# ---- the data ---------------------------------------------------------------------------------
def fashion_folder(
    root: Path, per_class: int = 440, cut: int = 50, test_per_class: int = 100
) -> Path:
    from PIL import Image

    from vitkit.experiments.demo_data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx

    if (root / "README.json").exists():
        return root
    rng = np.random.default_rng(0)
    for split, prefix, count in (("train", "train", per_class), ("test", "t10k", test_per_class)):
        images = read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        for index, name in enumerate(FASHION_MNIST_CLASSES):
            wanted = cut if split == "train" and name == "bag" else count
            chosen = np.sort(rng.choice(np.flatnonzero(labels == index), wanted, replace=False))
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for item in chosen:
                Image.fromarray(images[item]).save(root / split / name / f"{item:05d}.png")
    (root / "README.json").write_text("{}\n")
    return root


def digits_folder(root: Path) -> Path:
    from vitkit.experiments.demo_data import load_digits_arrays, write_image_folder

    if not (root / "README.json").exists():
        images, labels, classes = load_digits_arrays()
        write_image_folder(root, images, labels, classes, size=28, minority=8, seed=0)
    return root


def data_folder(work: Path, dataset: str) -> Path:
    if dataset == "fashion-mnist":
        return fashion_folder(work / dataset)
    return digits_folder(work / dataset)


# ---- one round ----------------------------------------------------------------------------------
def run_round(job: dict[str, Any]) -> dict[str, Any]:
    """Train one recipe on one data set with one seed, in a worker of one torch thread."""
    import torch

    from vitkit.training.config import TrainConfig, resolve_recipe
    from vitkit.training.trainer import train

    torch.set_num_threads(1)
    settings = dict(RECIPES[job["recipe"]])
    model_fields = {**MODELS[job["model"]], **settings.pop("model", {})}
    out = Path(job["out"])
    cfg = TrainConfig(
        data=job["data_dir"],
        out=str(out),
        from_scratch=True,
        preset=PRESET,
        model_overrides=model_fields,
        epochs=job["epochs"],
        seed=job["seed"],
        device="cpu",
        progress=False,
        log_every=1000,
        **settings,
    )
    started, cpu, load_before = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    result = train(cfg, model_factory=None)
    assert result.test is not None
    split = json.loads((out / "split.json").read_text())
    resolved = resolve_recipe(cfg)
    return {
        "data": job["dataset"],
        "recipe": job["recipe"],
        "model": job["model"],
        "seed": job["seed"],
        "epochs": job["epochs"],
        "macro_f1": result.test.report["macro_f1"],
        "accuracy": result.test.report["accuracy"],
        "best_epoch": result.best_epoch,
        "val_macro_f1": [r["val_macro_f1"] for r in result.history if r["type"] == "epoch"],
        "images": {
            "train": len(split["train"]),
            "val": len(split["val"]),
            "test": result.test.report["num_samples"],
        },
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(),
        "settings": {name: getattr(resolved, name) for name in RECIPE_SETTINGS},
        "model_fields": model_fields,
    }


# ---- the results file ---------------------------------------------------------------------------
def summarise(rounds: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in sorted(rounds, key=lambda r: (r["data"], r["recipe"], r["seed"])):
        groups.setdefault((row["data"], row["recipe"]), []).append(row)
    summary: dict[str, Any] = {"default_recipe": DEFAULT_RECIPE}
    rows = []
    for (data, recipe), group in groups.items():
        f1 = [r["macro_f1"] for r in group]
        summary[f"{data}/{recipe}"] = {
            "macro_f1_mean": round(statistics.mean(f1), 4),
            "min": round(min(f1), 4),
            "max": round(max(f1), 4),
            "seeds": len(f1),
        }
        name = f"{recipe} (default)" if recipe == DEFAULT_RECIPE else recipe
        rows.append(
            [
                data,
                name,
                f"{statistics.mean(f1):.3f} ({min(f1):.3f}-{max(f1):.3f})",
                len(f1),
                round(statistics.mean(r["cpu_s"] for r in group)),
                round(statistics.mean(r["wall_s"] for r in group)),
            ]
        )
    for data in sorted({d for d, _ in groups}):
        old = {r["seed"]: r["macro_f1"] for r in groups.get((data, "before"), [])}
        new = {r["seed"]: r["macro_f1"] for r in groups.get((data, DEFAULT_RECIPE), [])}
        paired = sorted(set(old) & set(new))
        if paired:
            summary[f"{data}/default_beats_before"] = {
                "seeds_won": sum(new[s] > old[s] for s in paired),
                "seeds": len(paired),
                "gain_mean": round(statistics.mean(new[s] - old[s] for s in paired), 4),
            }
    goal = [r["macro_f1"] for r in groups.get(("fashion-mnist", DEFAULT_RECIPE), [])]
    if goal:
        summary["goal_fashion_default"] = goal_verdict(goal, GOAL)
    columns = [
        "data",
        "recipe",
        "test macro-F1 mean (min-max)",
        "seeds",
        "CPU s / run",
        "wall s / run",
    ]
    return summary, {"columns": columns, "rows": rows}


def save(rounds: list[dict[str, Any]], args: argparse.Namespace, load: list[float]) -> None:
    summary, table = summarise(rounds)
    write_results(
        NAME,
        title="Training a small ViT from scratch: which recipe",
        summary=summary,
        rounds=sorted(rounds, key=lambda r: (r["data"], r["recipe"], r["seed"])),
        table=table,
        notes=NOTES.format(goal=GOAL, default=DEFAULT_RECIPE),
        extra={
            "epochs": args.epochs,
            "preset": PRESET,
            "model": MODELS[args.model],
            "recipes": RECIPES,
            "goal": GOAL,
            "jobs": args.jobs,
            "load_average_start": load,
        },
    )


NOTES = (
    "Real 10-class data at 28x28 with one class cut short (every round records its image counts): "
    "Fashion-MNIST, 3,609 training / 401 validation / 1,000 test images, bag cut to 45 training "
    "images; scikit-learn's digits (1,797 8x8 images upscaled: about 1,300 training images, class "
    "8 cut to 10%). A 4-block ViT at width 64, patch 4, trained from random weights for 15 "
    "epochs with oversampling; the test macro-F1 of the epoch with the lowest validation loss. "
    "`before` is --from-scratch's recipe before the convolutional stem; `{default}` is its "
    "default now (the plan prints it). Goal: {goal} test macro-F1 on Fashion-MNIST, met only "
    "when every seed clears it. CPU seconds per run at one torch thread, two runs at a time on 2 "
    "cores shared with other work (the wall time shows how busy)."
)


# ---- the command --------------------------------------------------------------------------------
def check_default_recipe() -> None:
    """``DEFAULT_RECIPE`` must be what ``--from-scratch`` resolves to, or the table would lie."""
    from vitkit.training.config import TrainConfig, resolve_recipe

    def resolved(**settings: Any) -> tuple[Any, ...]:
        settings.pop("model", None)
        cfg = resolve_recipe(TrainConfig(data="d", out="o", from_scratch=True, **settings))
        return tuple(getattr(cfg, name) for name in RECIPE_SETTINGS)

    if resolved(**RECIPES[DEFAULT_RECIPE]) != resolved():
        raise SystemExit(
            f"{DEFAULT_RECIPE} is no longer vitkit's from-scratch default: update RECIPES"
        )


def jobs_in_order(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Seed by seed, so that a partial results file already pairs every recipe."""
    folders = {dataset: data_folder(work, dataset) for dataset in args.data.split(",")}
    return [
        {
            "dataset": dataset,
            "data_dir": str(folders[dataset]),
            "recipe": recipe,
            "model": args.model,
            "seed": seed,
            "epochs": args.epochs,
            "out": str(work / "runs" / f"{dataset}-{args.model}-{recipe}-{seed}"),
        }
        for seed in (int(s) for s in args.seeds.split(","))
        for dataset in args.data.split(",")
        for recipe in args.recipes.split(",")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist,digits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--model", default="small", choices=sorted(MODELS))
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="fewer for a smoke run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--work", default=None, help="folder for the data and runs")
    args = parser.parse_args()
    check_default_recipe()
    load = [round(x, 2) for x in os.getloadavg()]
    work = Path(args.work or tempfile.mkdtemp(prefix="from-scratch-"))
    jobs = jobs_in_order(args, work)
    rounds: list[dict[str, Any]] = []
    context = get_context("spawn")  # fresh workers: no torch state inherited
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        for future in as_completed([pool.submit(run_round, job) for job in jobs]):
            row = future.result()
            print({k: v for k, v in row.items() if k != "val_macro_f1"}, flush=True)
            rounds.append(row)
            save(rounds, args, load)  # a partial file already holds every finished round


if __name__ == "__main__":
    main()
