"""`vitkit compare`: CNN baseline vs ViT (scratch, fine-tuned at two sizes, distilled) on one test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.experiments.compare_config import CompareConfig, CompareData

EPILOG = """\
Each row is a full training run in OUT/rows/<row>/ on the same data and test split. A killed
compare continues where it stopped (finished rows are reused, an unfinished one resumes).
Outputs: OUT/table.md, OUT/table.csv, OUT/metrics.png (grouped bars), OUT/confusion/<row>.png.

Label tables (--data a folder with train.csv and test.csv: path,labels rows, labels separated
by ;, as `vitkit train` reads them): every row trains multi-label (BCE, thresholds tuned on the
validation split; the distilled row with per-label sigmoid teacher terms), the columns are mAP,
macro-F1, micro-F1 and ROC-AUC, and the MAE pre-training reads the images train.csv lists.

Fine-tune rows start from --pretrained when given. Without it, a ViT of the same size is
pre-trained in the same run as a masked autoencoder (MAE, `vitkit pretrain`) on the training
images, labels unused, and the table says so: no published checkpoint is downloaded.

examples:
  # one command on 2 CPU cores: build an unbalanced digits folder, run all five rows
  vitkit compare --demo-data digits --out runs/compare
  # your own folder (train/ and test/ class folders), two rows only
  vitkit compare --data slides/ --out runs/cmp --rows baseline,scratch --image-size 64
  # multi-label: a folder with train.csv / val.csv / test.csv label tables
  vitkit compare --data mosaics/ --out runs/cmp-ml --image-size 32
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
    add_options(parser, CompareData)
    add_options(parser, CompareConfig)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> tuple[CompareConfig, CompareData]:
    where = config_from_args(CompareData, args)
    return config_from_args(CompareConfig, args, data=where.folder(args.out)), where


def run(args: argparse.Namespace) -> int:
    # torch and the trainer load when the command runs, not for `vitkit --help`
    from vitkit.experiments.compare import check_compare, compare

    cfg, where = settings(args)
    check_compare(cfg)  # before the demo data is built
    root = Path(cfg.data)
    if where.demo_data:
        from vitkit.experiments.demo_data import build_demo_folder

        if not (root / "README.json").exists():
            minority = 8
            info = build_demo_folder(root, where.demo_data, size=cfg.image_size, minority=minority)
            print(f"built {root}: train {info.train_counts}, test {info.test_counts}")
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
