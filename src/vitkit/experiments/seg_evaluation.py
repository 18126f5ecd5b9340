"""A saved segmentation model judged on images and their masks (``vitkit eval``, ``vitkit.evaluate``).

The masks' layout is ``vitkit train``'s (``vitkit.training.seg_data``): ``DATA/{train,val,test}/
{images,masks}/``, ``DATA/images + masks/`` or an image,mask table, and ``labels.json`` naming
the classes (they must be the model's, in its order). Every mask is checked first. Images are
preprocessed as the checkpoint says (``DenseProcessor``), masks brought to the model's input grid
(nearest), and the metrics are counted over every labelled pixel of the split: mIoU, per-class
IoU and Dice, pixel accuracy and the confusion matrix (``vitkit.training.seg_metrics``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitkit.errors import DatasetError
from vitkit.images.processor.dense import DenseProcessor
from vitkit.training import seg_data
from vitkit.training.evaluate import EvalResult
from vitkit.training.evaluate import evaluate as run_evaluator
from vitkit.training.seg_augment import JointEvalTransform
from vitkit.training.tasks.segment import SegmentationEvaluator


def evaluate_masks(
    classifier: Any, data: Path, split: str | None, batch_size: int, workers: int
) -> tuple[Path, str, EvalResult]:
    """(the data evaluated, the split's name, the result) of a segmentation model."""
    labels = list(classifier.labels)
    folder = data.parent if data.is_file() else data
    given = seg_data.read_labels(folder)
    if given != labels:
        raise DatasetError(
            f"{folder}: its classes {given[:20]} are not the model's {labels[:20]}: masks must "
            "use the model's class indices, in its order"
        )
    samples, split_name = seg_data.split_samples(data, split)
    scan = seg_data.scan_masks(samples, labels, keep=False)
    if not scan.good:
        raise DatasetError(f"{data}: no readable images in the {split_name} split")
    processor = DenseProcessor.from_dict(classifier.processor.to_dict())
    dataset = seg_data.MaskDataset(scan.good, JointEvalTransform(processor))
    result = run_evaluator(
        classifier.model,
        dataset,  # type: ignore[arg-type]
        SegmentationEvaluator(labels),
        device=classifier.device,
        batch_size=batch_size,
        workers=workers,
    )
    return data, split_name, result
