"""The task interface: what a run learns and how it is judged. The loop knows nothing else.

A ``TrainingTask`` is an ``nn.Module`` (timm's ``timm/task`` shape) that owns, as submodules,
the network being trained (``task.model``) and everything its loss needs (a frozen teacher, a
class weight as a buffer); called on a batch it returns a dict whose ``"loss"`` is the one
thing the loop reads. The loop (``vitkit.training.trainer``) makes exactly these calls:

    task.to(device); task.distribute(info)        once (DDP wraps ``task.model`` only)
    task.train()                                  at the start of every epoch
    out = task(images, targets)                   every micro-batch -> out["loss"].backward()
    with task.no_sync(): ...                      micro-batches before the last of a step
    task.evaluator                                validation/test passes (training.evaluate)
    task.save(directory), task.load_saved(dir)    best/ and the test pass on what was saved

The optimiser and ``last.pt`` see ``task.model`` alone, so a frozen teacher is neither
trained nor saved. A ``TaskBuilder`` (``vitkit.training.task_builder``) reads the data and
makes the task once the splits are known (a head needs the classes).

Adding a task (segmentation, slide-level MIL, ...), in ``vitkit/training/tasks/<name>.py``:

1. subclass ``TrainingTask``: ``__init__(spec, ...)`` calls ``super().__init__(spec)`` and sets
   ``self.evaluator`` (``vitkit.training.evaluate.Evaluator``: per-batch rows, a report, files);
   ``forward(images, targets)`` calls ``self.network`` (the model, or its DDP wrapper) and
   returns ``{"loss": ..., ...}``; any other module it needs is a submodule (``.to()`` moves
   it); one that must not learn is wrapped in ``Frozen`` (no gradients, always in eval mode);
   ``pipeline_tag`` (the model card's task) and ``input_text`` (when the input is no image)
   are class attributes to set;
2. subclass ``TaskBuilder``: ``build(cfg, splits)`` returns the task; override ``read_splits``
   / ``prepare_data`` when the data is not class folders (what the batch's ``targets`` are is
   the dataset's business: masks, bags, mask noise), ``resolve`` to fill in a recipe,
   ``callbacks`` for what the task adds around the loop (pictures, vetoes), ``describe_data``
   / ``recipe_note`` for the plan printed before the first epoch;
3. run it: ``vitkit.training.trainer.train(cfg, YourBuilder(...))``. No line of the loop changes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.training.distributed import DistInfo
from vitkit.training.evaluate import Evaluator
from vitkit.training.model_spec import ModelSpec


class TrainingTask(nn.Module):
    """A network (``spec.model``, the submodule ``model``) trained by ``forward``, judged by
    ``evaluator``; see the module docstring."""

    evaluator: Evaluator
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's (MAE pre-training uses 0.95)
    pipeline_tag = "image-classification"  # the Hub's task name, for the model card
    input_text: str | None = None  # what the model reads when not images (MIL: bags of vectors)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = spec.model

    @property
    def network(self) -> nn.Module:
        """What ``forward`` calls: the model, or its DDP wrapper once ``distribute`` made one."""
        # Kept in __dict__, not as a submodule: the task's state and .to() see the model once.
        wrapper: nn.Module | None = self.__dict__.get("_ddp")
        return wrapper if wrapper is not None else self.model

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def distribute(self, info: DistInfo) -> None:
        """Wrap the trained network for DDP; frozen submodules (a teacher) stay unwrapped."""
        if info.enabled:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
            self.__dict__["_ddp"] = ddp

    def no_sync(self) -> AbstractContextManager[Any]:
        """Skip DDP's gradient all-reduce (micro-batches before the last of a step)."""
        network = self.network
        if isinstance(network, nn.parallel.DistributedDataParallel):
            return network.no_sync()
        return nullcontext()

    def lr_scale(self, name: str) -> float:
        """The multiplier of the peak learning rate for parameter ``name`` of ``task.model``
        (layer-wise decay: segmentation); 1 for every parameter by default."""
        return 1.0

    def save(self, directory: Path) -> None:
        self.spec.save(self.model, directory)

    def load_saved(self, directory: Path) -> nn.Module:
        """What ``save`` wrote, loaded back: the test pass judges the saved model."""
        return self.spec.load(directory) if self.spec.load is not None else self.model

    @property
    def description(self) -> str:
        return self.spec.description


class Frozen(nn.Module):
    """A module that does not learn: no gradients, and eval mode whatever ``train()`` asks (a
    teacher's dropout stays off and its batch-norm statistics fixed while its task trains)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> Frozen:
        super().train(False)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)
