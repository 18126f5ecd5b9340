"""How a model is loaded and read: ``LoadSettings``, everything ``vitkit.load`` takes.

One torch-free dataclass, handed whole to ``vitkit.load``, the Ray workers, ``vitkit serve``,
``vitkit slide`` and ``vitkit eval``; the commands' ``--model``, ``--precision``, ``--threads``,
``--model-arg``... options are generated from its fields (``vitkit.cli._options``), so each
default is written here once. Torch-free: ``vitkit --help`` imports it at start-up.

Threads: the library's default is a fixed number (``DEFAULT_THREADS``: the cores this process
may run on), so that the same model gives the same numbers whatever else the machine runs (an int8 model quantises each sub-batch
on its own, and "auto" splits batches by the cores free at that moment). The command line and
the service ask for ``"auto"``: a tool that runs alone on a machine is free to adapt to it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from vitkit.errors import HeadError, UsageError, VitkitError
from vitkit.options import field_default, option

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_THREADS",
    "DEFAULT_TOP_K",
    "PRECISIONS",
    "PROBLEM_TYPES",
    "TTA_MODES",
    "InfoSettings",
    "LoadSettings",
    "check_threads",
    "default_model_name",
    "parse_threads",
    "parse_thresholds",
]

DEFAULT_MODEL = "google/vit-base-patch16-224"
DEFAULT_TOP_K = 5  # labels per image from a softmax head (transformers' pipeline's default)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
TTA_MODES = ("none", "flip", "rot90", "d4")
PROBLEM_TYPES = ("single_label", "multi_label")
PROCESSOR_MODES = ("fast", "pil")


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), fixed for the process's life."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call (macOS, Windows)
        return os.cpu_count() or 1


# One intra-op thread per usable core, whatever else runs: the same answers under any load on a
# given machine (an int8 model quantises each sub-batch on its own range, so the split must not
# follow the load), at full speed on an idle one. "auto" adapts to the load; a count is kept.
DEFAULT_THREADS = _usable_cores()
# One threshold for every label, one per label in label order, or some labels by name.
ThresholdSetting = float | list[float] | dict[str, float]

MODEL_HELP = (
    "checkpoint to use: an HF directory (ViT, DeiT student, ResNet: what `vitkit train`, "
    "`distill` and `compare` save), a hub id (google/vit-base-patch16-224), a timm "
    ".safetensors/.pth/.bin file, a Google .npz or an .onnx export"
)


def default_model_name() -> str:
    """``$VITKIT_MODEL`` if set, else google/vit-base-patch16-224."""
    return os.environ.get("VITKIT_MODEL") or DEFAULT_MODEL


def check_threads(threads: int | str | None) -> int | str | None:
    """``threads`` as the runtime takes it ("auto", None or a count >= 1), or a one-line error."""
    if threads is None:
        return None
    return parse_threads(threads)


def parse_threads(threads: int | str) -> int | str:
    """``--threads``: "auto" or a whole number >= 1 (text or a number), or a one-line error."""
    if threads == "auto":
        return threads
    try:
        count = int(threads)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(count) != str(threads).strip():
        raise VitkitError(f"threads {threads!r}: expected 'auto' or a whole number >= 1, e.g. 2")
    return count


def parse_thresholds(text: str) -> ThresholdSetting:
    """``0.4`` (every label), ``0.3,0.5,0.6`` (one per label, in label order) or
    ``cat=0.3,dog=0.6`` (those labels; the others keep their saved threshold)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        if parts and all("=" in part for part in parts):
            pairs = [part.rsplit("=", 1) for part in parts]
            return {name.strip(): float(value) for name, value in pairs}
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if not values:
        raise HeadError(
            f"--threshold {text!r}: give a probability (0.4), one per label (0.3,0.5,0.6) "
            "or label=value pairs (cat=0.3,dog=0.6)"
        )
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class LoadSettings:
    """Which checkpoint, how it runs, and how its head's scores are read."""

    model: str | None = option(
        None,
        MODEL_HELP,
        group="model",
        flags=("--model", "-m"),
        default_help="$VITKIT_MODEL, else " + DEFAULT_MODEL,
    )
    device: str | None = option(
        None, "cpu, cuda or cuda:N", group="model", default_help="cuda when available"
    )
    image_size: int | None = option(
        None,
        "run at this resolution, resampling the position embeddings (e.g. 384)",
        group="model",
        default_help="the checkpoint's",
    )
    precision: str = option(
        "fp32",
        "numeric precision (int8: dynamic quantization on CPU, ~1.7x faster on a 2-core AVX2 "
        "CPU; bf16/fp16: GPU only)",
        group="model",
        choices=PRECISIONS,
    )
    overrides: dict[str, Any] = option(
        help="set a model setting the checkpoint does not record, e.g. num_attention_heads=24, "
        "global_pool=avg, dynamic_img_size=true (timm files: what the shapes cannot tell; "
        "repeatable)",
        group="model",
        flags=("--model-arg",),
        metavar="KEY=VALUE",
        default_factory=dict,
    )
    threads: int | str = option(
        DEFAULT_THREADS,
        "CPU threads per forward pass: a number, or 'auto' (by batch size and by the cores other "
        "processes keep busy; vitkit's own decoding threads do not count)",
        group="model",
        parse=parse_threads,
    )
    jpeg_draft: bool = option(
        False,
        "APPROXIMATE, faster: decode JPEGs at a reduced DCT scale (1/2, 1/4, ...) before the "
        "resize; scores differ slightly from the checkpoint's exact preprocessing",
        group="model",
    )
    processor_mode: str | None = option(
        None,
        "preprocessing pipeline: fast (torch) or pil (transformers' PIL pipeline)",
        group="model",
        choices=PROCESSOR_MODES,
        default_help="the checkpoint processor's own",
        cli=False,
    )
    problem_type: str | None = option(
        None,
        "what the head was trained for when the checkpoint does not say (timm files, configs "
        "without problem_type): softmax over exclusive classes, or one sigmoid per label",
        group="head",
        choices=PROBLEM_TYPES,
    )
    threshold: ThresholdSetting | None = option(
        None,
        "multi-label models: a label is reported as present from this probability on; one "
        "value (0.4), one per label (0.3,0.5,...) or label=value pairs",
        group="head",
        parse=parse_thresholds,
        default_help="the thresholds saved with the model, else 0.5",
    )
    tta: str = option(
        "none",
        "test-time augmentation: the mean over flip (2 views), rot90 (4 quarter turns) or d4 "
        "(all 8 flips and turns), one forward pass; for images with no 'up'",
        group="head",
        choices=TTA_MODES,
    )
    allow_private_urls: bool = option(
        False,
        "fetch image URLs from private and loopback addresses too (internal stores)",
        group="image URLs",
    )
    allow_hosts: list[str] = option(
        help="fetch URLs from this host even if it resolves to a private address (repeatable)",
        group="image URLs",
        flags=("--allow-host",),
        metavar="HOST",
        repeat=True,
        default_factory=list,
    )

    def __post_init__(self) -> None:
        for name, allowed in (
            ("precision", PRECISIONS),
            ("tta", TTA_MODES),
            ("processor_mode", PROCESSOR_MODES),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise VitkitError(f"{name} {value!r}: choose one of {', '.join(allowed)}")
        check_threads(self.threads)
        if self.model is not None and not isinstance(self.model, str):
            object.__setattr__(self, "model", str(self.model))  # a Path is welcome

    @property
    def source(self) -> str:
        """The checkpoint to read: ``model``, else ``$VITKIT_MODEL`` or the default."""
        return self.model or default_model_name()

    def replace(self, **changes: Any) -> LoadSettings:
        return dataclasses.replace(self, **changes)


# Fields that decide how a model runs and fetches, not the numbers it gives (a resumed batch
# job may change them).
RUN_ONLY_FIELDS = frozenset({"device", "threads", "allow_private_urls", "allow_hosts"})


def output_identity(settings: LoadSettings) -> dict[str, Any]:
    """The settings that change a model's outputs (for a job's identity), as JSON-ready values."""
    identity = {
        item.name: getattr(settings, item.name)
        for item in dataclasses.fields(settings)
        if item.name not in RUN_ONLY_FIELDS
    }
    identity["model"] = settings.source
    return identity


@dataclass(frozen=True)
class InfoSettings:
    """``vitkit info``: which checkpoint to describe, and whether to time its start-up."""

    model: str = option(
        help="checkpoint file, directory or Hub id",
        group="model",
        flags=("model",),
        metavar="MODEL",
    )
    image_size: int | None = option(
        None,
        "describe the model resampled to this resolution (e.g. 384)",
        group="model",
        metavar="N",
        default_help="the checkpoint's",
    )
    num_heads: int | None = option(
        None,
        "attention heads (timm files)",
        group="model",
        metavar="H",
        default_help="timm's for the width",
    )
    json: bool = option(False, "print one JSON object", group="output")
    timings: bool = option(
        False,
        "also measure start-up: import torch, model load, preparing for --precision, first and "
        "steady forward of --batch-size images",
        group="timings",
    )
    precision: str = option(
        "fp32", "precision --timings prepares", group="timings", choices=PRECISIONS
    )
    batch_size: int = option(1, "images per timed forward", group="timings")
    device: str = option("cpu", "where --timings runs", group="timings")

    def __post_init__(self) -> None:
        if self.timings:
            return
        for name in ("precision", "batch_size", "device"):
            if getattr(self, name) != field_default(_INFO_FIELDS[name]):
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} needs --timings: only the timings run the model")


_INFO_FIELDS = {item.name: item for item in dataclasses.fields(InfoSettings)}
