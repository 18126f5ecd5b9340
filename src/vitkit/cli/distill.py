"""`vitkit distill`: train a DeiT-style student (distillation token + head) from a teacher."""

from __future__ import annotations

import argparse
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.errors import VitkitError
from vitkit.training.config import DistillConfig, TrainConfig

EPILOG = """\
The student is a ViT with a distillation token and a second head. The [CLS] head learns the
labels, the distillation head learns the teacher (hard: its arg-max class; soft: its softened
probabilities, KL at temperature T, scaled by T^2); alpha weighs the teacher's term. At
inference the two heads are averaged. The best epoch (lowest validation loss) is saved in OUT/best
as an HF DeiTForImageClassificationWithTeacher directory (vitkit and transformers load it).
An epoch in which the student never predicts some class, or has macro-F1 0, is reported as
COLLAPSED and never kept as the best model. With --mix cutmix (or mixup) each batch is blended
and the teacher labels the blended images (function matching, Beyer et al. 2022): the student
learns the teacher's answers on inputs beyond the labelled ones, which helps most when a class
has few images. A preset student trains with the from-scratch recipe (see vitkit train --help),
a student started from a checkpoint with the fine-tuning one; --model, --from-scratch and
--preset do not apply (--student says it all).

Label tables (--data labels.csv, or a folder with train.csv): the student learns several labels
per image, one sigmoid per label, from a multi-label teacher (e.g. `vitkit train --data TABLE`,
or compare's baseline row on tables): hard = BCE on the teacher's decisions at its own
thresholds, soft = BCE on its sigmoid at temperature T (scaled by T^2); no collapse veto.

examples:
  # teacher: a ResNet baseline trained by `vitkit compare` (or any HF ResNet / vitkit ViT dir)
  vitkit distill --teacher runs/compare/rows/baseline/best --student vit-tiny-patch4-32 \\
      --model-arg hidden_size=96 --model-arg num_hidden_layers=4 --data digits/ --out runs/deit \\
      --lr 2e-3 --epochs 15 --augment none
  # function matching: soft labels at T=4 on cutmix-blended batches (vitkit compare's recipe)
  vitkit distill --teacher runs/compare/rows/baseline/best --student vit-tiny-patch4-16 \\
      --model-arg hidden_size=64 --model-arg num_hidden_layers=4 --model-arg num_attention_heads=4 \\
      --model-arg intermediate_size=128 --data runs/compare/data --out runs/fm \\
      --kind soft --temperature 4 --alpha 0.7 --mix cutmix --optimizer adamw --lr 2e-3 \\
      --batch-size 32 --epochs 50 --augment none
  # soft distillation at T=3, student initialised from a ViT checkpoint
  vitkit distill --teacher runs/resnet50/best --student ./vit-small --kind soft --temperature 3 \\
      --data slides/ --out runs/deit-soft --image-size 224
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a teacher (e.g. a CNN) into a ViT student with a distillation token",
        description="DeiT-style distillation of a teacher classifier into a ViT student.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, DistillConfig)
    add_options(parser, TrainConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # torch and the trainer load when the command runs, not for `vitkit --help`
    from vitkit.training.metrics import format_multilabel_report, format_report
    from vitkit.training.tasks.distill import DistillationBuilder
    from vitkit.training.trainer import train

    if args.model is not None or args.from_scratch:
        raise VitkitError(
            "vitkit distill takes the student from --student (a preset, a ViT checkpoint or a "
            "student directory): drop --model / --from-scratch"
        )
    settings = config_from_args(DistillConfig, args)
    cfg = config_from_args(TrainConfig, args)
    builder = DistillationBuilder(
        settings.teacher,
        settings.student,
        kind=settings.kind,
        alpha=settings.alpha,
        temperature=settings.temperature,
        overrides=cfg.model_overrides,  # a preset student's architecture
    )
    result = train(cfg, builder)
    print(
        f"best epoch {result.best_epoch} (val loss {result.best_val_loss:.4f}): {result.out / 'best'}"
    )
    if result.test is not None:
        report = result.test.report
        print(f"\ntest split ({report['num_samples']} images), heads averaged:")
        print(format_multilabel_report(report) if "mAP" in report else format_report(report))
    return 0
