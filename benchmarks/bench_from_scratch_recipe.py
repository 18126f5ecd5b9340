"""Which recipe trains a small ViT from scratch: the old default (the fine-tuning recipe) vs the
from-scratch recipe vs variants, on real 10-class data (digits; Fashion-MNIST where installed).

Usage: python benchmarks/bench_from_scratch_recipe.py [--data digits,fashion-mnist]
           [--seeds 0,1] [--epochs 15] [--recipes old,new,...] [--out results.jsonl]

Every run: the same small ViT (``vit-tiny-patch4-16``: 16x16 input, 16 tokens, width 64,
4 blocks), balanced classes, the same epochs and batch size; only the recipe differs. One torch
thread per run (the machine is shared); the test macro-F1 of the best epoch (lowest validation
loss) is appended to ``--out`` as one JSON line per run, with the settings it resolved to, and a
results file benchmarks/results/from_scratch_recipe.json (every run, and a table: mean and
range over seeds) is written at the end, from every line in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
# What each contender sets; anything it leaves out comes from the from-scratch recipe.
RECIPES: dict[str, dict[str, Any]] = {
    # vitkit before: --from-scratch kept the fine-tuning recipe
    "old": {
        "optimizer": "sgd",
        "lr": 0.01,
        "warmup_fraction": 0.05,
        "label_smoothing": 0.0,
        "augment": "natural",
        "mix": "none",
    },
    "new": {},  # the from-scratch recipe as it stands in vitkit.training.config
    "adamw-lr1e-3-none": {"lr": 1e-3, "augment": "none"},
    "adamw-lr2e-3-shift": {"lr": 2e-3, "augment": "shift"},
    "adamw-lr1e-3-shift": {"lr": 1e-3, "augment": "shift"},
    "adamw-lr1e-3-shift-cutmix": {"lr": 1e-3, "augment": "shift", "mix": "cutmix"},
}


def run_one(data: Path, recipe: str, seed: int, epochs: int, out: Path) -> dict[str, Any]:
    from vitkit.training.config import TrainConfig, resolve_recipe
    from vitkit.training.trainer import train

    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        from_scratch=True,
        preset="vit-tiny-patch4-16",
        model_overrides=dict(MODEL),
        epochs=epochs,
        batch_size=64,
        seed=seed,
        device="cpu",
        progress=False,
        log_every=1000,
        **RECIPES[recipe],
    )
    started, cpu = time.perf_counter(), time.process_time()
    result = train(cfg)
    assert result.test is not None
    resolved = resolve_recipe(cfg)
    return {
        "recipe": recipe,
        "seed": seed,
        "epochs": epochs,
        "macro_f1": result.test.report["macro_f1"],
        "accuracy": result.test.report["accuracy"],
        "best_epoch": result.best_epoch,
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "settings": {
            k: getattr(resolved, k)
            for k in ("optimizer", "lr", "warmup_fraction", "label_smoothing", "augment", "mix")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits,fashion-mnist")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--recipes", default="old,new")
    parser.add_argument("--out", default="from_scratch_recipe.jsonl", help="runs, one per line")
    args = parser.parse_args()
    import torch

    from vitkit.experiments.demo_data import build_demo_folder, fashion_mnist_available

    torch.set_num_threads(1)
    results = Path(args.out)
    with tempfile.TemporaryDirectory() as scratch:
        for dataset in args.data.split(","):
            if dataset == "fashion-mnist" and not fashion_mnist_available():
                print(
                    "fashion-mnist: not installed (apt-get install dataset-fashion-mnist), skipped"
                )
                continue
            data = build_demo_folder(Path(scratch) / dataset, dataset, size=16, minority=None).root
            for seed in (int(s) for s in args.seeds.split(",")):
                for recipe in args.recipes.split(","):
                    out = Path(scratch) / f"{dataset}-{recipe}-{seed}"
                    row = {"data": dataset, **run_one(data, recipe, seed, args.epochs, out)}
                    row["machine"] = f"{platform.machine()}, torch {torch.__version__}, 1 thread"
                    with results.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    summarize(results)


def summarize(path: Path) -> None:
    """Write benchmarks/results/from_scratch_recipe.json from every run in ``path``."""
    from results_io import write_results

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    table = []
    for data, recipe in sorted({(r["data"], r["recipe"]) for r in rows}):
        group = [r for r in rows if (r["data"], r["recipe"]) == (data, recipe)]
        f1 = [r["macro_f1"] for r in group]
        cpu = statistics.mean(r["cpu_s"] for r in group)
        spread = f"{min(f1):.3f}-{max(f1):.3f}"
        table.append([data, recipe, f"{statistics.mean(f1):.3f}", spread, len(f1), f"{cpu:.0f}"])
    print(
        write_results(
            "from_scratch_recipe",
            title="Training a small ViT from scratch: which recipe",
            summary={"runs": len(rows)},
            rounds=rows,
            table={
                "columns": [
                    "data",
                    "recipe",
                    "test macro-F1 (mean)",
                    "range over seeds",
                    "seeds",
                    "CPU s / run",
                ],
                "rows": table,
            },
            notes="The same small ViT (`vit-tiny-patch4-16`: 16x16 input, width 64, 4 blocks) from "
            "scratch, 15 epochs, batch 64, balanced real 10-class data; test macro-F1 of the best "
            "epoch (lowest validation loss). One torch thread per run.",
        )
    )


if __name__ == "__main__":
    main()
