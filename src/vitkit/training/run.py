"""``Run``: what the trainer's phases and its callbacks share about one training run.

Its own module so that the callbacks (``vitkit.training.callbacks``) can name it without
importing the trainer, which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitkit.training import data as vdata
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.task import TrainingTask


@dataclass
class Run:
    """What the phases share, made once by ``vitkit.training.trainer.prepare_run``."""

    cfg: TrainConfig  # the recipe resolved
    out: Path
    info: DistInfo
    task: TrainingTask
    data: vdata.RunData
    sampler: vdata.EpochSampler
    loader: DataLoader[Any]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    micro_batch: int
    workers: int
    data_summary: str  # the task builder's lines about the data, for the plan
    recipe_summary: str  # and its line about the recipe

    @property
    def lr(self) -> float:
        return float(max(self.scheduler.get_last_lr()))  # the head's, under layer-wise decay
