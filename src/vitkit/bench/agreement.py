"""Does a faster precision change the answers? int8 (or bf16/fp16) against fp32, image by image.

``folder_agreement(model, "test_images/")`` runs both precisions on every image under the
folder and reports top-1 agreement and, when the sub-folder names are the model's labels (an
image folder like the one `vitkit train` reads), each precision's macro-F1 and the change.
``vitkit bench --agreement FOLDER`` prints it; with no folder, ``photo_crops`` gives real photos.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vitkit.bench.sample_data import real_photos
from vitkit.checkpoints import default_processor_config
from vitkit.images.processor import ImageProcessor
from vitkit.images.sources import expand_inputs
from vitkit.inference import runtime
from vitkit.training.metrics import classification_report

Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Agreement:
    precision: str
    images: int
    top1_agreement: float  # fraction of images whose top-1 class is the same as fp32's
    top5_overlap: float  # mean |top5(candidate) ∩ top5(fp32)| / 5
    macro_f1_fp32: float | None = None  # against the true labels, when the folder has them
    macro_f1_candidate: float | None = None

    @property
    def macro_f1_change(self) -> float | None:
        if self.macro_f1_fp32 is None or self.macro_f1_candidate is None:
            return None
        return self.macro_f1_candidate - self.macro_f1_fp32

    def summary(self) -> str:
        text = (
            f"{self.precision} vs fp32 on {self.images} images: top-1 agreement "
            f"{100 * self.top1_agreement:.1f}%, top-5 overlap {100 * self.top5_overlap:.1f}%"
        )
        if self.macro_f1_change is not None:
            text += (
                f", macro-F1 {self.macro_f1_fp32:.4f} -> {self.macro_f1_candidate:.4f} "
                f"(change {self.macro_f1_change:+.4f})"
            )
        return text


def compare_logits(
    reference: torch.Tensor,
    candidate: torch.Tensor,
    precision: str,
    labels: Sequence[int] | None = None,
) -> Agreement:
    """Agreement of ``candidate`` logits with ``reference`` (fp32) logits; F1 if labels given."""
    k = min(5, reference.shape[-1])
    top_ref = reference.topk(k, dim=-1).indices
    top_cand = candidate.topk(k, dim=-1).indices
    overlap = (top_ref[:, :, None] == top_cand[:, None, :]).any(-1).float().sum(-1) / k
    result = Agreement(
        precision,
        reference.shape[0],
        float((top_ref[:, 0] == top_cand[:, 0]).float().mean()),
        float(overlap.mean()),
    )
    if labels is not None:
        result.macro_f1_fp32 = macro_f1(labels, top_ref[:, 0].tolist(), reference.shape[-1])
        result.macro_f1_candidate = macro_f1(labels, top_cand[:, 0].tolist(), reference.shape[-1])
    return result


def macro_f1(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> float:
    """vitkit's one macro-F1 (``vitkit.training.metrics``): over ALL ``num_classes`` classes,
    as scikit-learn's ``f1_score(average="macro", labels=range(num_classes))``."""
    names = [str(index) for index in range(num_classes)]
    return float(classification_report(true, predicted, names)["macro_f1"])


def precision_pair(model: Any, precision: str) -> tuple[Logits, Logits]:
    """(fp32 logits, ``precision`` logits) callables on copies of ``model``.

    Both run on this process's thread count the way the runtime runs a batch there, sub-batch
    split per core included (``vitkit.inference.core_split``): dynamic int8 quantisation takes each
    activation's range from the tensor it sees, so which images share a sub-batch is part of
    what is being checked. (Not "auto": that follows the machine's load, and the check should
    give the same answer twice.)
    """
    threads = torch.get_num_threads()
    fp32 = runtime.optimize(copy.deepcopy(model), precision="fp32", threads=threads)
    candidate = runtime.optimize(
        copy.deepcopy(model), precision=precision, threads=threads, force=True
    )
    return fp32, candidate


def run_in_batches(function: Logits, pixel_values: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([function(chunk).float() for chunk in pixel_values.split(batch_size)])


def tensor_agreement(
    model: Any,
    pixel_values: torch.Tensor,
    precision: str = "int8",
    labels: Sequence[int] | None = None,
    batch_size: int = 32,
) -> Agreement:
    """Agreement of ``precision`` with fp32 on already-preprocessed images."""
    fp32, candidate = precision_pair(model, precision)
    reference = run_in_batches(fp32, pixel_values, batch_size)
    return compare_logits(
        reference, run_in_batches(candidate, pixel_values, batch_size), precision, labels
    )


def folder_images(
    folder: str | Path, label_names: Sequence[str]
) -> tuple[list[str], list[int] | None]:
    """Image paths under ``folder``, and their labels when every sub-folder is a model label."""
    root = Path(folder)
    paths = expand_inputs([str(root)])
    if not paths:
        raise FileNotFoundError(f"{root}: no image files found")
    index = {name: i for i, name in enumerate(label_names)}
    parents = [Path(path).relative_to(root).parts[0] for path in paths]
    if all(len(Path(p).relative_to(root).parts) > 1 for p in paths) and all(
        parent in index for parent in parents
    ):
        return paths, [index[parent] for parent in parents]
    return paths, None


def folder_agreement(
    model: Any,
    folder: str | Path,
    precision: str = "int8",
    *,
    processor: Any = None,
    batch_size: int = 32,
) -> Agreement:
    """Agreement of ``precision`` with fp32 on the images under ``folder`` (see module doc)."""
    processor = processor or ImageProcessor.from_dict(default_processor_config(model.config))
    paths, labels = folder_images(folder, model.config.labels())
    pixel_values = torch.cat([processor(list(chunk)) for chunk in _chunks(paths, batch_size)])
    return tensor_agreement(model, pixel_values, precision, labels, batch_size)


def photo_crops(count: int, image_hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``count`` random crops (scale 0.2-1, flips) of the bundled real photos, ViT-normalised."""
    generator = torch.Generator().manual_seed(seed)
    photos = [torch.tensor(p).permute(2, 0, 1).float() for p in real_photos()]
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[-2:]
        scale = 0.2 + 0.8 * float(torch.rand((), generator=generator))
        h, w = max(16, int(height * scale**0.5)), max(16, int(width * scale**0.5))
        top = int(torch.randint(0, height - h + 1, (), generator=generator))
        left = int(torch.randint(0, width - w + 1, (), generator=generator))
        crop = photo[None, :, top : top + h, left : left + w]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        crops.append(F.interpolate(crop, size=image_hw, mode="bilinear", antialias=True))
    return (torch.cat(crops) / 255 - 0.5) / 0.5


def agreement_text(
    model: Any, folder: str, precision: str, processor_config: dict[str, Any] | None = None
) -> str:
    """`vitkit bench --agreement`'s line: ``folder`` "photos" means the bundled photo crops."""
    if precision == "fp32":
        return "agreement: --precision is fp32, nothing to compare"
    if folder == "photos":
        pixels = photo_crops(256, model.config.image_hw)
        return tensor_agreement(model, pixels, precision).summary() + " (bundled photo crops)"
    processor = ImageProcessor.from_dict(processor_config) if processor_config else None
    return folder_agreement(model, folder, precision, processor=processor).summary()


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
