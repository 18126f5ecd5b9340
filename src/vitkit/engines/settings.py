"""What ``vitkit predict`` and ``vitkit embed`` run, and on which engine: torch-free settings.

``PredictSettings`` / ``EmbedSettings``: the inputs and what to make of them; ``EngineSettings``:
this process (``local``) or a Ray Data job (``ray``) and its workers. With ``LoadSettings``
(``vitkit.inference.settings``) they are everything the commands take: their options are
generated from these fields, and a field that only one engine honours says so (``engines``), so
that the other refuses it before any work instead of ignoring it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.errors import UsageError
from vitkit.inference.settings import DEFAULT_TOP_K
from vitkit.options import field_default, option

ENGINES = ("local", "ray")
RAY = ("ray",)
LOCAL = ("local",)
RAY_GROUP = "batch jobs on Ray Data (--engine ray)"
OUTPUT_FORMATS = ("table", "json", "jsonl", "csv")
POOLS = ("cls", "mean", "cls+mean", "pooler")
POOL_HELP = (
    "cls: final-norm [CLS] token; mean: mean of the patch tokens (a CNN's: of its last feature "
    "map); cls+mean: both, concatenated (Virchow's); pooler: transformers' pooler_output "
    "(dense+tanh on [CLS]; DINOv2: [CLS])"
)


@dataclass(frozen=True)
class EngineSettings:
    """Where the work runs: this process, or Ray workers (``vitkit.engines.ray``)."""

    engine: str = option(
        "local",
        "local: this process; ray: a Ray Data job over Ray workers",
        group=RAY_GROUP,
        choices=ENGINES,
    )
    ray_address: str | None = option(
        None,
        "auto or ray://HOST:10001: run on that Ray cluster",
        group=RAY_GROUP,
        default_help="start a local Ray for the job and stop it at the end",
        engines=RAY,
    )
    cpus_per_worker: float = option(
        1.0,
        "CPUs per Ray worker: its decoding (or tile-reading) threads and torch threads",
        group=RAY_GROUP,
        engines=RAY,
    )
    gpus_per_worker: float = option(0.0, "GPUs per Ray worker", group=RAY_GROUP, engines=RAY)
    image_column: str | None = option(
        None,
        "Parquet column of image bytes, URLs or paths",
        group=RAY_GROUP,
        default_help="image, bytes, image_bytes, url or path",
        engines=RAY,
        engine_note="Parquet inputs are read by Ray jobs",
    )
    id_column: str | None = option(
        None,
        "Parquet column naming each row",
        group=RAY_GROUP,
        default_help="id, else the URL/path, else a hash of the bytes",
        engines=RAY,
        engine_note="Parquet inputs are read by Ray jobs",
    )

    @property
    def on_ray(self) -> bool:
        return self.engine == "ray"


@dataclass(frozen=True, kw_only=True)
class ImageBatches:
    """Image sources and how they are batched (what predict and embed share)."""

    inputs: list[str] = option(
        help="image files, folders (searched recursively) or URLs; with --engine ray also list "
        "files (.txt: one path or URL per line) and Parquet",
        group="inputs",
        flags=("inputs",),
    )
    batch_size: int = option(
        16, "images per forward pass", group="inputs", flags=("--batch-size", "-b")
    )
    workers: int = option(
        2,
        "image-decoding threads; with --engine ray: Ray workers, each a model",
        group="inputs",
    )


@dataclass(frozen=True, kw_only=True)
class PredictSettings(ImageBatches):
    """``vitkit predict``: the top-k labels of every input."""

    top_k: int | None = option(
        None,
        "labels per image (multi-label models: every label, and the labels that pass their "
        "threshold are always listed)",
        group="output",
        flags=("--top-k", "-k"),
        default_help=str(DEFAULT_TOP_K),
    )
    format: str = option(
        "table",
        "output format",
        group="output",
        flags=("--format", "-f"),
        choices=OUTPUT_FORMATS,
        engines=LOCAL,
        engine_note="--engine ray writes Parquet shards to --out",
    )
    out: Path | None = option(
        None,
        "write the output to this file instead of stdout; with --engine ray: the folder of "
        "Parquet shards (required there)",
        group="output",
        flags=("--out", "-o"),
        default_help="stdout",
    )


@dataclass(frozen=True, kw_only=True)
class EmbedSettings(ImageBatches):
    """``vitkit embed``: one vector per input, in a file (or Parquet shards on Ray)."""

    out: Path = option(
        help="output file: .npy, .npz or .parquet (--engine ray: a folder of Parquet shards)",
        group="output",
        flags=("--out", "-o"),
    )
    pool: str | None = option(
        None,
        POOL_HELP,
        group="output",
        choices=POOLS,
        default_help="the model family's documented embedding, see `vitkit info`",
    )


def refuse_unhonoured(engine: str, *settings: Any) -> None:
    """A ``UsageError`` naming the first field set away from its default that ``engine`` does
    not honour (``--ray-address needs --engine ray``): refused before any work, never ignored."""
    for chosen in settings:
        for item in dataclasses.fields(chosen):
            honoured_by = item.metadata.get("engines")
            if honoured_by is None or engine in honoured_by:
                continue
            if getattr(chosen, item.name) != field_default(item):
                flag = (item.metadata.get("flags") or ("--" + item.name.replace("_", "-"),))[0]
                note = item.metadata.get("engine_note")
                needs = " or ".join(f"--engine {name}" for name in honoured_by)
                raise UsageError(f"{flag} needs {needs}" + (f": {note}" if note else ""))
