"""`vitkit train`: fine-tune a ViT (or train one from scratch) on an image folder."""

from __future__ import annotations

import argparse
import os
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.errors import UsageError
from vitkit.training.config import TrainConfig
from vitkit.training.seg_config import SegmentationSettings

EPILOG = """\
data layout:
  DATA/<class>/*.jpg                       a validation split (--val-fraction) is drawn and
                                           written to OUT/split.json
  DATA/train/<class>/*, DATA/val/..., DATA/test/...   used as given (test: evaluated at the end)
  labels.csv (path,labels with labels a;b) or labels.jsonl, or DATA/{train,val,test}.csv:
                                           several labels per image (multi-label: BCE, rare
                                           labels oversampled, thresholds tuned on val)
  DATA/images/*.jpg + DATA/masks/*.png + DATA/labels.json (or DATA/{train,val,test}/images/
  + masks/, or a CSV table with columns image,mask): segmentation, one class per pixel (mask
                                           values = class indices, 255 = not labelled; a DPT or
                                           linear head, --seg-head; docs/segmentation.md)

examples:
  # the ViT paper's recipe: SGD momentum 0.9, warm-up + cosine, fine-tuned at 384 from a 224 model
  vitkit train --data slides/ --out runs/vit384 --model google/vit-base-patch16-224 \\
      --image-size 384 --augment seed --batch-size 512 --grad-accum 16 --lr 0.01 --epochs 10
  # linear probe
  vitkit train --data pets/ --out runs/probe --model ./vit-b16 --freeze-backbone --lr 0.1
  # a small ViT from scratch (the from-scratch recipe: AdamW, warm-up, label smoothing, shift)
  vitkit train --data digits/ --out runs/tiny --from-scratch --preset vit-tiny-patch4-32 \\
      --model-arg num_hidden_layers=4 --epochs 30
  # several labels per image, from a label table
  vitkit train --data tiles/labels.csv --out runs/tags --model ./vit-b16 --augment seed
  # segmentation: a DPT head on DINOv2, fine-tuned with layer-wise lr decay
  vitkit train --data tissue/ --out runs/seg --model facebook/dinov2-small --seg-head dpt \
      --layer-decay 0.75 --augment seed --dice-weight 0.5
  # continue a run that was killed
  vitkit train --data slides/ --out runs/vit384 --model google/vit-base-patch16-224 --resume
  # 4 GPUs (or CPU processes with gloo); 2 machines: add --nnodes 2 --rdzv-backend c10d
  #   --rdzv-endpoint HOST0:29500 --rdzv-id RUN and run the same command on both
  torchrun --nproc-per-node 4 -m vitkit train --data slides/ --out runs/ddp --model ./vit-b16

Recipes: options left unset take the fine-tuning recipe (SGD lr 0.01, natural augmentation) or,
with --from-scratch, the from-scratch one (AdamW, longer warm-up, label smoothing, no flips);
the plan printed at the start says which values the run uses.
--batch-size is the global batch per optimiser step: it is split over processes and
--grad-accum micro-batches, so the same settings train the same model on 1 or N processes.
OUT gets best/ (lowest validation loss, HF format), last.pt (for --resume), metrics.jsonl,
metrics.csv, curves.png and test/ (metrics.json, confusion matrix) when DATA has test/.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune or train a ViT on an image folder",
        description="Fine-tune a ViT checkpoint (or train one from scratch) on an image folder, "
        "keep the best epoch by validation loss and report macro metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, TrainConfig)
    add_options(parser, SegmentationSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # torch and the trainer load when the command runs, not for `vitkit --help`
    from vitkit.training.distributed import cleanup_distributed
    from vitkit.training.metrics import format_multilabel_report, format_report
    from vitkit.training.stored_data import is_multi_label_data
    from vitkit.training.tasks.multilabel import MultiLabelBuilder
    from vitkit.training.trainer import train

    config = config_from_args(TrainConfig, args)
    segmentation = _segmentation_builder(config, args)
    # a label table, or stored data with list labels: several labels per image
    columns = (config.image_column, config.label_column)
    multi_label = segmentation is None and is_multi_label_data(config.data, columns)
    try:
        result = train(config, segmentation or (MultiLabelBuilder() if multi_label else None))
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # only rank 0 reports
    print(
        f"best epoch {result.best_epoch} (val loss {result.best_val_loss:.4f}): {result.out / 'best'}"
    )
    if result.test is not None:
        print(f"\ntest split ({result.test.report['num_samples']} images):")
        report = result.test.report
        if segmentation is not None:
            from vitkit.training.seg_metrics import format_segmentation_report

            print(format_segmentation_report(report))
        else:
            print(format_multilabel_report(report) if multi_label else format_report(report))
        print(f"\nwritten to {result.out / 'test'}")
    return 0


def _segmentation_builder(config: TrainConfig, args: argparse.Namespace) -> Any:
    """A SegmentationBuilder when DATA holds images and masks; the segmentation options are
    refused (exit 2) for any other data."""
    from vitkit.training.seg_data import is_mask_dataset

    try:
        settings = config_from_args(SegmentationSettings, args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if is_mask_dataset(config.data):
        from vitkit.training.tasks.segment import SegmentationBuilder

        return SegmentationBuilder(settings)
    given = [
        name for name, value in settings.to_dict().items()
        if value != getattr(SegmentationSettings(), name)
    ]  # fmt: skip
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(
            f"{flags}: segmentation options, and --data {config.data} holds no images/ + "
            "masks/ (nor an image,mask table)"
        )
    return None
