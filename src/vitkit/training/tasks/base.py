"""The task interface: what a run learns and how it is judged. The loop knows nothing else.

A ``TrainingTask`` owns the network being trained (``task.model``) and everything its loss needs
(a frozen teacher, a class weight, a mixing rule); called on a batch it returns a dict whose
``"loss"`` is the one thing the loop reads (timm's ``timm/task`` shape). The loop
(``vitkit.training.trainer``) makes exactly these calls:

    task.to(device); task.distribute(info)        once (DDP wraps only what learns)
    task.train()                                  at the start of every epoch
    out = task(images, targets)                   every micro-batch -> out["loss"].backward()
    with task.no_sync(): ...                      micro-batches before the last of a step
    task.evaluator                                validation/test passes (training.evaluate)
    task.save(directory), task.load_saved(dir)    best/ and the test pass on what was saved

A ``TaskBuilder`` makes the task once the data's splits are known (a head needs the classes):
``builder.read_splits(cfg, out)`` (default: class folders, ``vitkit.training.data``) and
``builder.build(cfg, splits)``. New tasks (MAE pre-training, multi-label) subclass both and
change no line of the loop: an MAE task's forward returns the reconstruction loss and its
evaluator reports that loss only; a multi-label task's targets are multi-hot rows and its
evaluator reports sigmoid metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.training import data as vdata
from vitkit.training.checks import check_class_splits
from vitkit.training.config import TrainConfig
from vitkit.training.distributed import DistInfo
from vitkit.training.evaluate import Evaluator
from vitkit.training.model_spec import ModelSpec


class TrainingTask:
    """Base class: a network (``spec.model``) trained by ``forward``, judged by ``evaluator``."""

    evaluator: Evaluator
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's (MAE pre-training uses 0.95)
    pipeline_tag = "image-classification"  # the Hub's task name, for the model card

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model = spec.model
        self.network: nn.Module = spec.model  # what forward calls: the model, or its DDP wrapper

    # ---- what the loop calls ----------------------------------------------------------------
    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward(images, targets)

    def to(self, device: torch.device) -> TrainingTask:
        self.model.to(device)
        return self

    def train(self) -> None:
        self.network.train()

    def distribute(self, info: DistInfo) -> None:
        """Wrap the trained network for DDP (a frozen teacher stays unwrapped)."""
        if info.enabled:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def no_sync(self) -> AbstractContextManager[Any]:
        """Skip DDP's gradient all-reduce (micro-batches before the last of a step)."""
        if isinstance(self.network, nn.parallel.DistributedDataParallel):
            return self.network.no_sync()
        return nullcontext()

    def save(self, directory: Path) -> None:
        self.spec.save(self.model, directory)

    def load_saved(self, directory: Path) -> nn.Module:
        """What ``save`` wrote, loaded back: the test pass judges the saved model."""
        return self.spec.load(directory) if self.spec.load is not None else self.model

    @property
    def description(self) -> str:
        return self.spec.description


class TaskBuilder(ABC):
    """Reads a run's data and builds its task (see the module docstring).

    The defaults read class folders: ``read_splits`` the splits, ``prepare_data`` the datasets
    (bad-image scan, class balance, the task's transforms). A task with other data (images
    without labels, label tables) overrides them.
    """

    def check(self, cfg: TrainConfig) -> None:  # noqa: B027 - an optional hook, not abstract
        """Refuse settings this task cannot train with (before any work); TrainingError."""

    def check_splits(self, cfg: TrainConfig, splits: vdata.DataSplits) -> None:
        """Refuse data these settings cannot train on, before any image is decoded."""
        check_class_splits(cfg, splits)

    def describe_data(self, data: vdata.RunData) -> str:
        """The plan's lines about the data (printed before the first epoch)."""
        classes = data.splits.classes
        counts = vdata.class_counts([s.label for s in data.train.samples], len(classes))
        return (
            f"data: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test) if data.test else 0} test images, {len(classes)} classes; train "
            f"counts {dict(zip(classes, counts.tolist(), strict=True))}\n"
            f"balance: {data.balance} ({len(data.train_indices)} samples per epoch)"
        )

    def read_splits(self, cfg: TrainConfig, out: Path | None) -> vdata.DataSplits:
        """The images of each split; ``out``: where split.json is written (None: read only)."""
        return vdata.prepare_splits(cfg.data, out, cfg.val_fraction, cfg.seed)

    @abstractmethod
    def build(self, cfg: TrainConfig, splits: vdata.DataSplits) -> TrainingTask:
        """The task for these splits (its model sized for their classes)."""

    def prepare_data(
        self,
        cfg: TrainConfig,
        out: Path,
        task: TrainingTask,
        splits: vdata.DataSplits,
        info: DistInfo,
    ) -> vdata.RunData:
        """The datasets of the run, transformed for ``task.spec``'s model."""
        return vdata.prepare_run_data(cfg, out, task.spec, splits, info.is_main)
