"""`vitkit embed`: one embedding vector per image, written to .npy, .npz or .parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vitkit.atomic_files import atomic_open
from vitkit.cli._common import (
    add_inputs_argument,
    add_model_options,
    add_tta_option,
    load_classifier,
    prepared_batches,
    progress_bar,
)
from vitkit.cli._engine import ENGINE_EPILOG, add_engine_options, run_on_ray
from vitkit.errors import VitkitError

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
    add_inputs_argument(parser)
    add_model_options(parser)
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        type=Path,
        help="output file: .npy, .npz or .parquet (--engine ray: a folder of Parquet shards)",
    )
    parser.add_argument(
        "--pool",
        default=None,
        choices=["cls", "mean", "cls+mean", "pooler"],
        help="cls: final-norm [CLS] token; mean: mean of the patch tokens (a CNN's: of its last "
        "feature map); cls+mean: both, concatenated (Virchow's); pooler: transformers' "
        "pooler_output (dense+tanh on [CLS]; DINOv2: [CLS]) (default: the model family's "
        "documented embedding, see `vitkit info`)",
    )
    add_tta_option(parser)
    add_engine_options(parser, add_out=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # torch loads here, not at `vitkit --help` time
    import numpy as np

    from vitkit.images.decode import expand_inputs
    from vitkit.models.protocol import check_pool

    if args.engine == "ray":
        return run_on_ray(args, "embed", {"pool": args.pool})
    suffix = args.out.suffix.lower()
    if suffix not in (".npy", ".npz", ".parquet"):
        raise VitkitError(f"--out {args.out}: use a .npy, .npz or .parquet file name")
    sources = expand_inputs(args.inputs)
    classifier = load_classifier(args)
    pool = args.pool or classifier.default_pool
    check_pool(classifier.model, pool)  # once, before any image is decoded
    names: list[str] = []
    vectors: list[Any] = []
    errors: dict[str, str] = {}
    with progress_bar(len(sources), "embedding") as advance:
        for chunk, batch in prepared_batches(classifier, sources, args):
            errors.update({chunk[index]: str(error) for index, error in batch.errors.items()})
            if batch.indices:
                embedding = classifier.embed_tensor(batch.pixel_values, pool)
                vectors.append(embedding.cpu().numpy())
                names.extend(chunk[index] for index in batch.indices)
            advance(len(chunk))
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    write_embeddings(args.out, names, matrix, errors)
    for message in errors.values():
        print(f"vitkit embed: {message}", file=sys.stderr)
    print(
        f"wrote {matrix.shape[0]} embeddings of size {matrix.shape[1]} to {args.out}",
        file=sys.stderr,
    )
    return 1 if errors else 0


def write_embeddings(path: Path, names: list[str], matrix: Any, errors: dict[str, str]) -> None:
    """Write the file whole or not at all (a temporary file renamed into place)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        with atomic_open(path) as handle:
            if suffix == ".npy":
                np.save(handle, matrix)
            else:
                np.savez(
                    handle,
                    embeddings=matrix,
                    inputs=np.array(names, dtype=str),
                    failed_inputs=np.array(list(errors), dtype=str),
                )
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as error:
            raise VitkitError(
                "writing .parquet needs pyarrow: pip install 'vitkit[parquet]'"
            ) from error
        # A fixed-size list column straight from the float32 buffer: no per-row Python lists.
        dim = matrix.shape[1]
        column = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim)
        table = pa.table({"input": names, "embedding": column})
        with atomic_open(path) as handle:
            pq.write_table(table, handle)
