"""One pass of a model over a dataset, judged by a task's evaluator; its files.

``evaluate`` runs the model in eval mode over every image once, in batches, and hands each batch
to the evaluator, which returns per-image rows (``"loss"`` and whatever it needs: class
probabilities, sigmoid scores, ...). Under DDP every process evaluates its share and the rows are
gathered, so every process returns the same full result, in dataset order.
``ClassificationEvaluator`` is the single-label one: cross-entropy, softmax, the classification
report of ``vitkit.training.metrics`` (macro averages over all classes), and for a test pass
metrics.json, confusion_matrix.json and confusion_matrix.png.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from vitkit.atomic_files import atomic_write_text
from vitkit.errors import TrainingError
from vitkit.models.protocol import logits_of
from vitkit.training import data as vdata
from vitkit.training.distributed import DistInfo, all_gather_objects
from vitkit.training.metrics import classification_report
from vitkit.training.plots import plot_confusion_matrix


class Evaluator(Protocol):
    """How a task is judged on a split; ``vitkit.training.evaluate.evaluate`` drives it.

    ``batch`` returns per-image rows (first dimension = batch) and must include ``"loss"``; the
    evaluation gathers them over batches and processes, in dataset order, and ``report`` turns
    them into a JSON-ready dict. ``scalars`` picks the numbers logged every epoch (as
    ``val_<name>``), ``write`` the files of a test pass.
    """

    def batch(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]: ...

    def report(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, Any]: ...

    def scalars(self, report: dict[str, Any]) -> dict[str, float]: ...

    def write(self, result: EvalResult, directory: Path, title: str) -> None: ...


@dataclass
class EvalResult:
    loss: float  # mean of the per-image losses
    report: dict[str, Any]
    outputs: dict[str, np.ndarray]  # the evaluator's per-image rows, in dataset order
    targets: np.ndarray
    indices: np.ndarray  # dataset index of each row
    paths: list[str]  # image file of each row

    @property
    def probabilities(self) -> np.ndarray:
        """(N, classes) softmax (single-label evaluators)."""
        return self.outputs["probabilities"]

    @property
    def predictions(self) -> np.ndarray:
        return self.outputs["probabilities"].argmax(-1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: vdata.ImageDataset,
    evaluator: Evaluator,
    *,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    dist_info: DistInfo | None = None,
) -> EvalResult:
    """``evaluator``'s report of ``model`` on ``dataset`` (see the module docstring)."""
    dist_info = dist_info or DistInfo(device=device)
    sampler = vdata.EpochSampler(
        range(len(dataset)), shuffle=False, num_replicas=dist_info.world_size, rank=dist_info.rank
    )
    loader = DataLoader(
        _IndexedDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers
    )
    was_training = model.training
    model.eval()
    parts: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
    with autocast(device):
        for pixels, targets, indices in loader:
            rows = evaluator.batch(model, pixels.to(device, non_blocking=True), targets.to(device))
            numpy_rows = {name: value.float().cpu().numpy() for name, value in rows.items()}
            parts.append((indices.numpy(), targets.numpy(), numpy_rows))
    model.train(was_training)
    gathered = [part for rank_parts in all_gather_objects(parts, dist_info) for part in rank_parts]
    if not gathered:
        raise TrainingError("the evaluation set is empty")
    indices = np.concatenate([part[0] for part in gathered])
    order = np.argsort(indices, kind="stable")
    targets_np = np.concatenate([part[1] for part in gathered])[order]
    outputs = {
        name: np.concatenate([part[2][name] for part in gathered])[order] for name in gathered[0][2]
    }
    indices = indices[order]
    return EvalResult(
        loss=float(outputs["loss"].mean()),
        report=evaluator.report(outputs, targets_np),
        outputs=outputs,
        targets=targets_np,
        indices=indices,
        paths=[dataset.samples[i].path for i in indices.tolist()],
    )


class ClassificationEvaluator:
    """Single-label classification: cross-entropy, softmax, macro metrics, confusion matrix."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = list(labels)

    def batch(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        logits = logits_of(model(images)).float()
        # Plain cross-entropy (no smoothing, no class weights): runs with different training
        # losses compare on the same validation loss.
        losses = F.cross_entropy(logits, targets, reduction="none")
        return {"loss": losses, "probabilities": logits.softmax(-1)}

    def report(self, outputs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        predictions = outputs["probabilities"].argmax(-1)
        return classification_report(targets, predictions, self.labels)

    def scalars(self, report: dict[str, Any]) -> dict[str, float]:
        names = ("accuracy", "macro_f1", "macro_precision", "macro_recall")
        return {name: report[name] for name in names}

    def write(self, result: EvalResult, directory: Path, title: str) -> None:
        save_eval_outputs(result, self.labels, directory, title)


def save_eval_outputs(result: EvalResult, labels: list[str], out: Path, title: str) -> None:
    """metrics.json, confusion_matrix.json and confusion_matrix.png of one evaluation."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in result.report.items() if k != "confusion_matrix"}
    metrics["loss"] = result.loss
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    matrix = {
        "labels": labels,
        "matrix": result.report["confusion_matrix"],
        "rows": "true",
        "columns": "predicted",
    }
    atomic_write_text(out / "confusion_matrix.json", json.dumps(matrix, indent=1) + "\n")
    plot_confusion_matrix(
        result.report["confusion_matrix"], labels, out / "confusion_matrix.png", title
    )


class ProcessorTransform:
    """One image through an ``ImageProcessor`` -> (3, H, W); picklable for loader workers."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(image)[0]


class _IndexedDataset(torch.utils.data.Dataset):
    """Adds the dataset index to each item so gathered results can be put back in order."""

    def __init__(self, dataset: vdata.ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, Any, int]:
        index = item[0] if isinstance(item, tuple) else item
        pixels, target = self.dataset[index]
        return pixels, target, index


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA; plain fp32 on CPU (bf16 matmuls are far slower on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
