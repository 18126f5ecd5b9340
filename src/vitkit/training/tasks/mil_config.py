"""The settings slide-level learning adds to a training run, each written once (torch-free, so
``vitkit mil --help`` stays fast).

The optimisation is the MIL literature's (Ilse et al. 2018; CLAM): AdamW at a small learning
rate with weight decay 1e-4, one bag per forward (bags differ in size, nothing is padded), a
short warm-up then cosine decay; ``mil_recipe`` fills those into a ``TrainConfig`` where it left
them unset. ``--batch-size`` counts bags per optimiser step: the gradients of that many bags
are accumulated.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from vitkit.options import option
from vitkit.training.config import TrainConfig

# = vitkit.models.mil.MIL_MODELS (tests/test_mil_models.py keeps them equal): written out so
# that `vitkit mil --help` imports no torch.
MIL_MODEL_CHOICES = ("mean", "max", "abmil", "clam_sb", "transmil")
MIL_LR = 5e-4
MIL_WEIGHT_DECAY = 1e-4
MIL_WARMUP_FRACTION = 0.05
BEST_EPOCH_CHOICES = ("val-loss", "last")


@dataclass
class MILSettings:
    """What a slide-level run learns from, and the network it trains."""

    # ---- the slide table
    embeddings: str | None = option(
        None,
        "folder of `vitkit slide --embed` outputs: OUT/<slide name>/embeddings.parquet",
        group="slides",
        default_help="none: the table's embeddings column gives each file",
    )
    encoder: str | None = option(
        None,
        "tile encoder for listed slides not embedded yet (they are embedded first, resumably)",
        group="slides",
        default_help="none: every slide must be embedded already",
    )
    slide_column: str = option("slide", "slide table column: slide id or path", group="slides")
    label_column: str = option("label", "slide table column: the slide's label", group="slides")
    patient_column: str = option(
        "patient",
        "slide table column: patient id (a patient's slides stay in one split); optional",
        group="slides",
    )
    split_column: str = option(
        "split", "slide table column: train, val or test; optional", group="slides"
    )
    multi_label: bool = option(
        False, "labels are ';'-separated sets (one sigmoid per label)", group="slides"
    )
    # ---- the splits
    test_fraction: float = option(
        0.2, "share of patients held out for testing when the table has no split", group="splits"
    )
    folds: int = option(
        1, "k-fold cross-validation by patient (1: one train/val/test split)", group="splits"
    )
    # ---- the network
    mil_model: str = option(
        "abmil",
        "slide-level network: mean/max pooling, gated attention (abmil), CLAM-SB, TransMIL",
        group="network",
        flags=("--mil-model",),
        choices=MIL_MODEL_CHOICES,
    )
    hidden_dim: int = option(256, "tile projection width", group="network")
    attention_dim: int = option(128, "attention branch width", group="network")
    dropout: float = option(0.25, "dropout after the projection and in attention", group="network")
    clam_k: int = option(8, "CLAM: most/least attended tiles in the instance loss", group="network")
    clam_weight: float = option(
        0.3, "CLAM: weight of the instance loss (the bag loss gets the rest)", group="network"
    )
    heads: int = option(8, "TransMIL: attention heads", group="network")
    layers: int = option(2, "TransMIL: transformer layers", group="network")
    standardize: bool = option(
        True,
        "standardise each embedding feature by the training tiles' mean and std (kept in the model)",
        group="network",
        flags=("--no-standardize",),
    )
    best_epoch: str = option(
        "last",
        "the epoch saved as best/: the last (the whole warm-up + cosine schedule), or the one "
        "with the lowest validation loss (needs a validation split large enough to choose by)",
        group="network",
        choices=BEST_EPOCH_CHOICES,
    )
    max_tiles: int | None = option(
        None,
        "training only: a random sample of at most this many tiles per bag, redrawn each epoch",
        group="network",
        default_help="every tile",
    )
    # ---- the report
    bootstrap: int = option(
        1000, "bootstrap resamples of the test slides for the 95% intervals", group="report"
    )

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Ranges knowable from the settings alone; ValueError with the option's name."""
        rules = [
            (0 <= self.test_fraction < 1, f"--test-fraction {self.test_fraction}: use [0, 1)"),
            (self.folds >= 1, f"--folds {self.folds}: use 1 or more"),
            (0 <= self.dropout < 1, f"--dropout {self.dropout}: use [0, 1)"),
            (0 <= self.clam_weight <= 1, f"--clam-weight {self.clam_weight}: use [0, 1]"),
            (self.clam_k >= 1, f"--clam-k {self.clam_k}: use 1 or more"),
            (self.max_tiles is None or self.max_tiles >= 1, "--max-tiles: use 1 or more"),
            (self.bootstrap >= 0, f"--bootstrap {self.bootstrap}: use 0 or more"),
            (
                min(self.hidden_dim, self.attention_dim, self.heads, self.layers) >= 1,
                "--hidden-dim, --attention-dim, --heads and --layers must be >= 1",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)


def mil_recipe(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with MIL's optimisation where it left values unset: AdamW, lr 5e-4 (Ilse et al.), weight decay
    1e-4, 5% warm-up, no label smoothing, one bag per forward (``--batch-size`` bags are
    accumulated per step), evaluation one bag at a time, data read in this process."""
    return dataclasses.replace(
        cfg,
        optimizer=cfg.optimizer or "adamw",
        lr=cfg.lr if cfg.lr is not None else MIL_LR,
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else MIL_WEIGHT_DECAY,
        warmup_fraction=(
            cfg.warmup_fraction if cfg.warmup_fraction is not None else MIL_WARMUP_FRACTION
        ),
        label_smoothing=cfg.label_smoothing if cfg.label_smoothing is not None else 0.0,
        augment="none",
        mix="none",
        # one bag per forward on every process: the rest of a step's bags are accumulated
        grad_accum=max(1, cfg.batch_size // int(os.environ.get("WORLD_SIZE", "1"))),
        eval_batch_size=1,
        workers=cfg.workers if cfg.workers is not None else 0,
        cache_images="no",
    )


@dataclass
class MILPredictSettings:
    """What ``vitkit mil predict`` writes per slide (see ``vitkit.slides.mil_outputs``)."""

    top_k: int = option(
        8, "tiles in each row of gallery.png (most and least attended)", group="outputs"
    )
    heatmap: bool = option(
        True, "write heatmap-attention.png", group="outputs", flags=("--no-heatmap",)
    )
    heatmap_scale: str = option(
        "percentile",
        "heatmap colours: each tile's rank among the slide's (CLAM's maps), or its attention "
        "over the slide's largest (where the weight really goes)",
        group="outputs",
        choices=("percentile", "linear"),
    )
    gallery: bool = option(
        True,
        "write gallery.png (reads tiles from the slide file)",
        group="outputs",
        flags=("--no-gallery",),
    )
    geojson: bool = option(
        True, "write attention.geojson", group="outputs", flags=("--no-geojson",)
    )


@dataclass
class MILModelSettings:
    """Which saved slide-level model ``vitkit mil eval`` / ``predict`` run, where, and on what."""

    model: str = option(
        help="a slide-level model folder (`vitkit mil train`'s OUT/best)",
        group="model",
        flags=("--model", "-m"),
    )
    out: str = option(help="output folder", group="model", flags=("--out", "-o"))
    device: str | None = option(
        None, "cpu, cuda or cuda:N", group="model", default_help="cuda when available"
    )
    split: str | None = option(
        None,
        "eval: only the slide table's rows with this split",
        group="model",
        choices=("train", "val", "test"),
        default_help="every row",
    )
