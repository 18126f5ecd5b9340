"""`vitkit train`: fine-tune a ViT (or train one from scratch) on an image folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vitkit.cli._common import add_augment_option, add_mix_options, add_run_options

EPILOG = """\
data layout:
  DATA/<class>/*.jpg                       a validation split (--val-fraction) is drawn and
                                           written to OUT/split.json
  DATA/train/<class>/*, DATA/val/..., DATA/test/...   used as given (test: evaluated at the end)

examples:
  # the ViT paper's recipe: SGD momentum 0.9, warm-up + cosine, fine-tuned at 384 from a 224 model
  vitkit train --data slides/ --out runs/vit384 --model google/vit-base-patch16-224 \\
      --image-size 384 --augment seed --batch-size 512 --grad-accum 16 --lr 0.01 --epochs 10
  # linear probe
  vitkit train --data pets/ --out runs/probe --model ./vit-b16 --freeze-backbone --lr 0.1
  # a small ViT from scratch
  vitkit train --data digits/ --out runs/tiny --from-scratch --preset vit-tiny-patch4-32 \\
      --model-arg num_hidden_layers=4 --optimizer adamw --lr 2e-3 --epochs 30
  # continue a run that was killed
  vitkit train --data slides/ --out runs/vit384 --model google/vit-base-patch16-224 --resume
  # 4 GPUs (or CPU processes with gloo); 2 machines: add --nnodes 2 --rdzv-backend c10d
  #   --rdzv-endpoint HOST0:29500 --rdzv-id RUN and run the same command on both
  torchrun --nproc-per-node 4 -m vitkit train --data slides/ --out runs/ddp --model ./vit-b16

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
    add_train_options(parser)
    parser.set_defaults(func=run)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The options of `vitkit train` (other commands that train reuse them)."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="image folder (one sub-folder per class)")
    data.add_argument("--out", required=True, help="run folder for checkpoints, logs and plots")
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="validation share when DATA has no val/ (default 0.1)",
    )
    data.add_argument(
        "--balance",
        default="auto",
        choices=["auto", "none", "oversample", "weighted-loss"],
        help="class balance: auto = oversample when class counts differ (default)",
    )
    add_augment_option(data, default="natural", help="augmentation preset (default natural)")
    add_mix_options(data)
    data.add_argument(
        "--on-bad-image",
        default="skip",
        choices=["skip", "fail"],
        help="unreadable images: skip with a report, or stop (default skip)",
    )
    data.add_argument(
        "--cache-images",
        default="auto",
        choices=["auto", "yes", "no"],
        help="keep decoded images in memory (auto: up to 20k images)",
    )
    data.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-loading processes (default: 0 with the cache, else up to 8)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        "-m",
        default=None,
        help="checkpoint to fine-tune: HF directory, hub id, timm file or .npz",
    )
    model.add_argument(
        "--from-scratch", action="store_true", help="random initialisation from --preset"
    )
    model.add_argument(
        "--preset",
        default="vit-tiny-patch16-224",
        help="architecture for --from-scratch (e.g. vit-small-patch16-224)",
    )
    model.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ViTConfig field for --from-scratch (repeatable)",
    )
    model.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="training resolution; position embeddings are resampled (e.g. 384)",
    )
    model.add_argument(
        "--freeze-backbone", action="store_true", help="train only the new head (linear probe)"
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=10)
    optim.add_argument(
        "--batch-size",
        "-b",
        type=int,
        default=64,
        help="global images per optimiser step (default 64)",
    )
    optim.add_argument(
        "--grad-accum", type=int, default=1, help="micro-batches per optimiser step (default 1)"
    )
    optim.add_argument(
        "--optimizer",
        default="sgd",
        choices=["sgd", "adamw"],
        help="sgd (momentum 0.9, the paper's fine-tuning) or adamw",
    )
    optim.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default 0.01 sgd, 1e-3 adamw)"
    )
    optim.add_argument(
        "--weight-decay", type=float, default=None, help="default 0 for sgd, 0.05 for adamw"
    )
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.05,
        help="share of steps for linear warm-up (default 0.05)",
    )
    optim.add_argument(
        "--warmup-steps", type=int, default=None, help="warm-up steps (overrides --warmup-fraction)"
    )
    optim.add_argument(
        "--clip-grad-norm", type=float, default=1.0, help="global gradient-norm clip (0 = off)"
    )
    optim.add_argument("--label-smoothing", type=float, default=0.0)

    runtime = parser.add_argument_group("run")
    add_run_options(runtime)
    runtime.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    runtime.add_argument("--log-every", type=int, default=10, help="log the loss every N steps")


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """``["num_hidden_layers=4", "hidden_size=64"]`` -> dict, values parsed as JSON when they can be."""
    from vitkit.errors import VitkitError

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise VitkitError(f"--model-arg {pair!r}: expected KEY=VALUE, e.g. num_hidden_layers=4")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def config_from_args(args: argparse.Namespace) -> Any:
    from vitkit.training.trainer import TrainConfig

    if args.model is None and not args.from_scratch:
        from vitkit.errors import VitkitError

        raise VitkitError(
            "name a checkpoint to fine-tune with --model, or train with --from-scratch --preset NAME"
        )
    return TrainConfig(
        data=args.data,
        out=args.out,
        model=args.model,
        from_scratch=args.from_scratch,
        preset=args.preset,
        model_overrides=parse_model_args(args.model_arg),
        image_size=args.image_size,
        freeze_backbone=args.freeze_backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        warmup_fraction=args.warmup_fraction,
        warmup_steps=args.warmup_steps,
        clip_grad_norm=args.clip_grad_norm,
        label_smoothing=args.label_smoothing,
        balance=args.balance,
        augment=args.augment,
        mix=args.mix,
        mix_alpha=args.mix_alpha,
        val_fraction=args.val_fraction,
        on_bad_image=args.on_bad_image,
        cache_images=args.cache_images,
        workers=args.workers,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        log_every=args.log_every,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    import os

    from vitkit.training.distributed import cleanup_distributed
    from vitkit.training.metrics import format_report
    from vitkit.training.trainer import train

    try:
        result = train(config_from_args(args))
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # only rank 0 reports
    print(
        f"best epoch {result.best_epoch} (val loss {result.best_val_loss:.4f}): {result.out / 'best'}"
    )
    if result.test is not None:
        print(f"\ntest split ({result.test.report['num_samples']} images):")
        print(format_report(result.test.report))
        print(f"\nwritten to {result.out / 'test'}")
    return 0
