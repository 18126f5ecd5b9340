"""`vitkit compare`: CNN baseline vs ViT (scratch, fine-tuned at two sizes, distilled) on one test split."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vitkit.cli._common import (
    add_augment_option,
    add_distill_options,
    add_mix_options,
    add_run_options,
)

EPILOG = """\
Each row is a full training run in OUT/rows/<row>/ on the same data and test split. A killed
compare continues where it stopped (finished rows are reused, an unfinished one resumes).
Outputs: OUT/table.md, OUT/table.csv, OUT/metrics.png (grouped bars), OUT/confusion/<row>.png.

Fine-tune rows start from --pretrained when given. Without it, a ViT of the same size is
pre-trained in the same run on a different task (rotation prediction on the training images,
labels unused) and the table's notes say so: no published checkpoint is downloaded.

examples:
  # one command on 2 CPU cores: build an unbalanced digits folder, run all five rows
  vitkit compare --demo-data digits --out runs/compare
  # your own folder (train/ and test/ class folders), two rows only
  vitkit compare --data slides/ --out runs/cmp --rows baseline,scratch --image-size 64
  # GPU-sized: ResNet-50 from torchvision weights, ViT-B/16 fine-tuned at 224 and 384
  vitkit compare --data slides/ --out runs/cmp --baseline-arch resnet50 \\
      --baseline-weights resnet50.pth --pretrained google/vit-base-patch16-224 \\
      --vit-preset vit-base-patch16-224 --vit-arg num_hidden_layers=12 --image-size 224 --high-image-size 384
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="table of CNN baseline vs ViT from scratch / fine-tuned / distilled",
        description="Train every row on the same data and test split; write a table, a chart "
        "and confusion matrices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="image folder with train/ and test/ class sub-folders")
    data.add_argument(
        "--demo-data",
        choices=["digits", "fashion-mnist"],
        help="build an unbalanced folder from bundled data into OUT/data (class 8 / bag cut to 10%%)",
    )
    parser.add_argument("--out", required=True, help="output folder (rows, table, charts)")
    parser.add_argument(
        "--rows", default=",".join(_rows()), help="comma-separated rows (default: all five)"
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="ViT checkpoint for the fine-tune rows (anything vitkit loads)",
    )
    parser.add_argument(
        "--vit-preset", default="vit-tiny-patch4-16", help="ViT architecture for all ViT rows"
    )
    parser.add_argument(
        "--vit-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override a ViTConfig field (repeatable; default hidden_size=64 num_hidden_layers=4 "
        "num_attention_heads=4 intermediate_size=128)",
    )
    parser.add_argument("--image-size", type=int, default=16, help="base resolution (default 16)")
    parser.add_argument(
        "--high-image-size",
        type=int,
        default=None,
        help="finetune384 resolution (default base x 384/224)",
    )
    parser.add_argument(
        "--baseline-arch",
        default="resnet18",
        choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
    )
    parser.add_argument(
        "--baseline-weights",
        default=None,
        help="torchvision .pth/.safetensors or HF ResNet directory",
    )
    parser.add_argument("--epochs", type=int, default=50, help="epochs per ViT row (default 50)")
    parser.add_argument(
        "--baseline-epochs", type=int, default=15, help="epochs for the CNN baseline (default 15)"
    )
    parser.add_argument(
        "--pretrain-epochs", type=int, default=4, help="rotation pre-training epochs (default 4)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="every row (default 32)")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--lr", type=float, default=2e-3)
    add_augment_option(
        parser, default="none", help="training augmentation for every row (default none)"
    )
    add_distill_options(
        parser,
        prefix="distill-",
        kind="soft",
        alpha=0.7,
        temperature=4.0,
        row=" of the distilled row",
    )
    add_mix_options(
        parser,
        default="cutmix",
        prefix="distill-",
        help="mix the distilled row's batches; the teacher labels the mixed images "
        "(function matching)",
    )
    add_run_options(parser)
    parser.set_defaults(func=run)


def _rows() -> tuple[str, ...]:
    return ("baseline", "scratch", "finetune224", "finetune384", "distilled")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitkit.cli.train import parse_model_args
    from vitkit.experiments.compare import CompareConfig, compare

    data = args.data
    if args.demo_data:
        from vitkit.experiments.demo_data import build_demo_folder

        root = Path(args.out) / "data"
        if not (root / "README.json").exists():
            minority = 8
            info = build_demo_folder(root, args.demo_data, size=args.image_size, minority=minority)
            print(f"built {root}: train {info.train_counts}, test {info.test_counts}")
        data = str(root)
    cfg = CompareConfig(
        data=data,
        out=args.out,
        rows=[r.strip() for r in args.rows.split(",") if r.strip()],
        pretrained=args.pretrained,
        vit_preset=args.vit_preset,
        image_size=args.image_size,
        high_image_size=args.high_image_size,
        baseline_arch=args.baseline_arch,
        baseline_weights=args.baseline_weights,
        epochs=args.epochs,
        baseline_epochs=args.baseline_epochs,
        pretrain_epochs=args.pretrain_epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        augment=args.augment,
        distill_kind=args.distill_kind,
        distill_alpha=args.distill_alpha,
        distill_temperature=args.distill_temperature,
        distill_mix=args.distill_mix,
        distill_mix_alpha=args.distill_mix_alpha,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    if args.vit_arg is not None:
        cfg.vit_overrides = parse_model_args(args.vit_arg)
    compare(cfg)
    out = Path(args.out)
    print((out / "table.md").read_text())
    print(
        json.dumps(
            {
                "table": str(out / "table.md"),
                "csv": str(out / "table.csv"),
                "chart": str(out / "metrics.png"),
            }
        )
    )
    return 0
