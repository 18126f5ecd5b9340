"""`vitkit embed`: one embedding vector per image, written to .npy, .npz or .parquet."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vitkit.cli._engine import ENGINE_EPILOG, batch_job, run_on_ray
from vitkit.cli._loading import ENTRY_POINT_DEFAULTS, load_classifier
from vitkit.cli._options import add_options, config_from_args
from vitkit.cli._progress import progress_bar
from vitkit.engines.settings import EmbedSettings, EngineSettings, refuse_unhonoured
from vitkit.inference.settings import LoadSettings

EPILOG = """\
examples:
  vitkit embed photos/ --out embeddings.npz
  vitkit embed --model google/vit-large-patch16-224-in21k --pool pooler slides/ --out emb.parquet
  vitkit embed --model runs/tiles/best --tta d4 tiles/ --out emb.npy   # mean over 8 flips/turns
  vitkit embed --model facebook/dinov2-base tiles/ --out dinov2.npz          # pooler: [CLS]
  vitkit embed --model virchow2/ --model-arg dynamic_img_size=true tiles/ --out v2.parquet

Without --pool, each model gives the embedding its authors document (`vitkit info` names it):
[CLS] for ViT, DINOv2, UNI, UNI2-h, Prov-GigaPath, H-optimus-0; [CLS] + mean patch token
(registers left out) for Virchow and Virchow2.

.npy holds the (N, dim) array; .npz and .parquet also hold the input names (and errors).
Inputs that fail to decode are reported on stderr and left out; the exit code is then 1.

""" + ENGINE_EPILOG.format(command="embed", out="embeddings/")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="compute image embeddings",
        description="Embed images with any vitkit model (works on checkpoints without a "
        "classification head).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, EmbedSettings)
    add_options(parser, LoadSettings, defaults=ENTRY_POINT_DEFAULTS)
    add_options(parser, EngineSettings)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> Any:
    """What the command hands the library: (LoadSettings, EmbedSettings) in this process, the
    BatchJob on Ray; an option the chosen engine cannot honour is refused here."""
    from vitkit.inference.files import check_embeddings_path

    load = config_from_args(LoadSettings, args)
    embed = config_from_args(EmbedSettings, args)
    engine = config_from_args(EngineSettings, args)
    refuse_unhonoured(engine.engine, embed, load, engine)
    if engine.on_ray:
        return batch_job("embed", load, embed, engine, pool=embed.pool)
    check_embeddings_path(embed.out)
    return load, embed


def run(args: argparse.Namespace) -> int:
    # torch loads here, not at `vitkit --help` time
    from vitkit.images.sources import expand_inputs
    from vitkit.inference.files import embed_sources, write_embeddings

    if args.engine == "ray":
        return run_on_ray(settings(args))
    load, embed = settings(args)
    sources = expand_inputs(embed.inputs)
    classifier = load_classifier(load)
    with progress_bar(len(sources), "embedding") as advance:
        embeddings = embed_sources(
            classifier,
            sources,
            pool=embed.pool,
            batch_size=embed.batch_size,
            workers=embed.workers,
            progress=advance,
        )
    write_embeddings(embed.out, embeddings)
    for message in embeddings.errors.values():
        print(f"vitkit embed: {message}", file=sys.stderr)
    rows, size = embeddings.matrix.shape
    print(f"wrote {rows} embeddings of size {size} to {embed.out}", file=sys.stderr)
    return 1 if embeddings.errors else 0
