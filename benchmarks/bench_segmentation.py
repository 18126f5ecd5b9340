"""Segmentation quality on real pixels: ViT heads (linear probe, DPT) against a U-Net, 3 seeds.

Usage: python benchmarks/bench_segmentation.py [--data fashion,ihc] [--seeds 0,1,2]
           [--rows probe,dpt,dpt-mae,unet] [--runs runs.jsonl] [--work DIR]
           [--write-only] [--epochs N --mae-epochs N (a smoke run)]

Data (``vitkit.experiments.seg_datasets``, built once, seed 0):

- fashion: Fashion-MNIST mosaics, 64x64 canvases with 2-4 items each, every item's pixels
  labelled with its class, the rest "background" (11 classes); disjoint item pools per split.
- ihc: scikit-image's immunohistochemistry sample, masks from colour deconvolution (rgb2hed,
  Otsu, opened, specks removed: background / hematoxylin / DAB), 64x64 tiles, train / val /
  test from separate bands of rows.

Rows, each trained by vitkit's trainer with the same data, epochs, batch and augmentation:

- probe: DINOv2's linear protocol (last 4 blocks, BatchNorm, 1x1 conv) on the FROZEN encoder
  that ``vitkit pretrain`` (MAE) trained on the same training images;
- dpt: a DPT head on a ViT trained end to end from random weights (linear patch embedding, the
  layout transformers' DPTForSemanticSegmentation loads);
- dpt-p4: the same with 4-pixel patches (16x16 tokens at 64 px: the decoder's finest map is
  twice as fine);
- dpt-mae: a DPT head on the MAE encoder, fine-tuned end to end (layer decay 0.75);
- unet: segmentation_models_pytorch's U-Net (ResNet-18 encoder) from random weights.

The ViT is 4 blocks of width 96, patch 8 (8x8 tokens at 64 px; patch 4 in dpt-p4). Test-split
mIoU / mean Dice / pixel accuracy of the best epoch (lowest validation loss). One torch thread per
run; each run is appended to ``--runs`` (a re-run skips what is there; default in the work
folder) and the results file benchmarks/results/segmentation.json (every run, mean ± std per row)
is written from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import results_io

ENCODER = {
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 192,
}
PRESET = "vit-tiny-patch8-64"
EPOCHS = {"fashion": 30, "ihc": 30}
MAE_EPOCHS = {"fashion": 40, "ihc": 40}
BATCH = 16
ROWS = ("probe", "dpt", "dpt-p4", "dpt-mae", "unet")
ROW_NAMES = {
    "probe": "linear probe, frozen MAE encoder",
    "dpt": "DPT, ViT trained end to end",
    "dpt-p4": "DPT, ViT with 4-px patches, trained end to end",
    "dpt-mae": "DPT on the MAE encoder, fine-tuned",
    "unet": "U-Net (ResNet-18, smp) from scratch",
}


NOTES = (
    "Data: Fashion-MNIST mosaics (64 px canvases, 2-4 items, 11 classes; 160 train / 32 val / "
    "100 test canvases) and scikit-image's IHC sample (64 px tiles; background / hematoxylin / "
    "DAB from colour deconvolution; train, validation and test from separate bands of rows). "
    "ViT: 4 blocks, width 96, patch 8 (4 in the 4-px row); the MAE encoder by `vitkit "
    f"pretrain` on the same training images ({MAE_EPOCHS['fashion']} epochs, batch 32); every "
    f"row {EPOCHS['fashion']} epochs, batch {BATCH}, AdamW, augment seed, the epoch of lowest "
    "validation loss tested. The data are small so that 3 seeds of 5 rows on 2 data sets "
    "train on a shared 2-core CPU (one torch thread per run, 0.5-4 CPU minutes each); the "
    "scores are those of this small regime, not of ViTs at scale. Run time is in every round "
    "(train_seconds, under the load shown below); the scores do not depend on it. Runs append "
    "to a runs file and an interrupted one resumes, so the rounds may come from several "
    "invocations; the commit below is the one that wrote this file."
)


def build_data(name: str, root: Path) -> Path:
    from vitkit.experiments.seg_datasets import fashion_mosaics, ihc_stains

    target = root / name
    if (target / "labels.json").is_file():
        return target
    if name == "fashion":
        return fashion_mosaics(target, sizes=(160, 32, 100), canvas=64, items=(2, 4))
    return ihc_stains(target, tile=64)


def pretrain_mae(data: Path, out: Path, seed: int, epochs: int) -> Path:
    """``vitkit pretrain`` on the training images, as a user runs it; returns best/."""
    if (out / "best" / "config.json").is_file():
        return out / "best"
    command = [sys.executable, "-m", "vitkit", "pretrain", "--data", str(data / "train" / "images")]
    command += ["--out", str(out), "--preset", PRESET, "--epochs", str(epochs)]
    command += ["--batch-size", "32", "--seed", str(seed), "--device", "cpu", "--no-progress"]
    command += ["--decoder-depth", "2", "--decoder-width", "64", "--norm-pix-loss"]
    command += ["--lr", "1.5e-3", "--pictures", "0"]
    if (out / "last.pt").is_file():  # an interrupted pre-training continues where it stopped
        command += ["--resume"]
    for key, value in ENCODER.items():
        command += ["--model-arg", f"{key}={value}"]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out / "best"


def train_row(row: str, data: Path, out: Path, seed: int, epochs: int, mae: Path | None) -> Any:
    from vitkit.training.config import TrainConfig
    from vitkit.training.seg_config import SegmentationSettings
    from vitkit.training.seg_specs import unet_spec
    from vitkit.training.tasks.segment import SegmentationBuilder
    from vitkit.training.trainer import train

    common: dict[str, Any] = dict(
        data=str(data), out=str(out), epochs=epochs, batch_size=BATCH, seed=seed,
        device="cpu", progress=False, optimizer="adamw", augment="seed", balance="none",
        label_smoothing=0.0, resume=(out / "last.pt").is_file(),
    )  # fmt: skip
    if row == "probe":
        cfg = TrainConfig(**common, model=str(mae), freeze_backbone=True, lr=3e-3)
        builder = SegmentationBuilder(SegmentationSettings(seg_head="linear", linear_layers=4))
    elif row in ("dpt", "dpt-p4"):
        preset = PRESET if row == "dpt" else PRESET.replace("patch8", "patch4")
        cfg = TrainConfig(
            **common, from_scratch=True, preset=preset, model_overrides=dict(ENCODER), lr=1e-3,
            patch_embed="linear",  # the paper's patch projection: a DPT transformers loads
        )  # fmt: skip
        builder = SegmentationBuilder(SegmentationSettings(seg_head="dpt"))
    elif row == "dpt-mae":
        cfg = TrainConfig(**common, model=str(mae), lr=1e-3)
        builder = SegmentationBuilder(SegmentationSettings(seg_head="dpt", layer_decay=0.75))
    else:
        cfg = TrainConfig(**common, image_size=64, lr=1e-3)
        builder = SegmentationBuilder(model_factory=unet_spec("resnet18", image_size=64))
    return train(cfg, builder)


def run_one(name: str, row: str, seed: int, work: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    data = build_data(name, work / "data")
    mae = None
    if row in ("probe", "dpt-mae"):
        mae = pretrain_mae(data, work / f"mae-{name}-{seed}", seed, MAE_EPOCHS[name])
    started, cpu = time.perf_counter(), time.process_time()
    result = train_row(row, data, work / f"{name}-{row}-{seed}", seed, EPOCHS[name], mae)
    report = result.test.report
    return {
        "data": name,
        "row": row,
        "seed": seed,
        "mean_iou": report["mean_iou"],
        "mean_dice": report["mean_dice"],
        "pixel_accuracy": report["pixel_accuracy"],
        "per_class_iou": {k: v["iou"] for k, v in report["per_class"].items()},
        "best_epoch": result.best_epoch,
        "epochs": EPOCHS[name],
        "train_seconds": round(time.perf_counter() - started, 1),
        "train_cpu_seconds": round(time.process_time() - cpu, 1),
    }


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, table): mean ± std of each row's mIoU, Dice and pixel accuracy per data set."""
    summary: dict[str, Any] = {}
    rows = []
    for name in ("fashion", "ihc"):
        for row in ROWS:
            found = [r for r in runs if r["data"] == name and r["row"] == row]
            if not found:
                continue
            cells = {}
            for metric in ("mean_iou", "mean_dice", "pixel_accuracy"):
                values = [r[metric] for r in found]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells[metric] = {"mean": statistics.mean(values), "std": spread}
            summary[f"{name}/{row}"] = {**cells, "seeds": len(found)}
            rows.append(
                [name, ROW_NAMES[row], len(found)]
                + [f"{cells[m]['mean']:.3f} ± {cells[m]['std']:.3f}" for m in cells]
            )
    columns = ["data", "model", "seeds", "test mIoU", "mean Dice", "pixel accuracy"]
    return summary, {"columns": columns, "rows": rows}


def goals(summary: dict[str, Any]) -> list[str]:
    """The two goals, per data set, met or not, with the mIoU means they are read from."""
    lines = []
    for name in ("fashion", "ihc"):
        miou = {
            row: summary[f"{name}/{row}"]["mean_iou"]["mean"]
            for row in ROWS
            if f"{name}/{row}" in summary
        }
        dpts = {row: miou[row] for row in ("dpt", "dpt-p4", "dpt-mae") if row in miou}
        if "probe" in miou and dpts:
            met = all(value > miou["probe"] for value in dpts.values())
            shown = ", ".join(f"{row} {value:.3f}" for row, value in dpts.items())
            lines.append(
                f"{name}: DPT rows beat the linear probe: {'met' if met else 'NOT met'} "
                f"({shown} vs probe {miou['probe']:.3f})"
            )
        vits = {row: value for row, value in miou.items() if row != "unet"}
        if "unet" in miou and vits:
            best = max(vits, key=lambda row: vits[row])
            gap = vits[best] - miou["unet"]
            lines.append(
                f"{name}: best ViT row within 0.02 mIoU of the U-Net or above: "
                f"{'met' if gap >= -0.02 else 'NOT met'} ({best} {vits[best]:.3f} vs U-Net "
                f"{miou['unet']:.3f}, {gap:+.3f})"
            )
    return lines


def read_runs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion,ihc")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--runs", type=Path, help="runs file (default: WORK/runs.jsonl)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitkit-bench-segmentation"))
    parser.add_argument("--write-only", action="store_true", help="only write the results file")
    parser.add_argument("--epochs", type=int, help="every row's epochs (a smoke run)")
    parser.add_argument("--mae-epochs", type=int, help="MAE pre-training epochs (a smoke run)")
    args = parser.parse_args()
    if args.epochs:
        EPOCHS.update(dict.fromkeys(EPOCHS, args.epochs))
    if args.mae_epochs:
        MAE_EPOCHS.update(dict.fromkeys(MAE_EPOCHS, args.mae_epochs))
    args.runs = args.runs or args.work / "runs.jsonl"  # not under results/: only results files
    results_io.mark_start()
    done = read_runs(args.runs)
    if not args.write_only:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.data.split(","):
                for row in args.rows.split(","):
                    if any((r["data"], r["row"], r["seed"]) == (name, row, seed) for r in done):
                        continue
                    record = run_one(name, row, seed, args.work)
                    print(json.dumps(record), flush=True)
                    with args.runs.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    done.append(record)
    done = read_runs(args.runs)  # with what runs beside this one appended meanwhile
    unique = {(r["data"], r["row"], r["seed"]): r for r in reversed(done)}  # first run of each
    done = sorted(unique.values(), key=lambda r: (r["seed"], r["data"], ROWS.index(r["row"])))
    summary, table = summarise(done)
    summary["goals"] = goals(summary)
    results_io.write_results(
        "segmentation",
        title="Segmentation on real pixels: ViT heads vs a U-Net (test split, mean ± std over seeds)",
        command=f"python benchmarks/bench_segmentation.py --data {args.data} --seeds {args.seeds} "
        f"--rows {args.rows}",
        summary=summary,
        rounds=done,
        table=table,
        notes=NOTES + "\n\nGoals: " + "; ".join(summary["goals"]) + ".",
    )


if __name__ == "__main__":
    main()
