"""vitkit: Vision Transformers with exact checkpoints, fine-tuning, serving and benchmarks.

import vitkit
classifier = vitkit.load("google/vit-base-patch16-224")   # or a directory, .safetensors, .npz
classifier.predict(["cat.jpg"], top_k=5)   # [[{"label": ..., "score": ...}, ...]]
classifier.embed(["cat.jpg"], pool="cls")  # (1, 768) numpy array
vitkit.evaluate("runs/vit/best", "photos/")  # the report `vitkit eval` prints: .text(), .report

The public names below load on first use (PEP 562), so ``import vitkit`` and ``vitkit --help``
do not pay for importing torch. The package is in layers, each a sub-package (see the README's
Architecture section).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Classifier": "vitkit.inference.classifier",
    "load": "vitkit.inference.classifier",
    "LoadSettings": "vitkit.inference.settings",
    "evaluate": "vitkit.experiments.evaluation",
    "ViTConfig": "vitkit.models.config",
    "preset": "vitkit.models.config",
    "ViT": "vitkit.models.vit",
    "ViTOutput": "vitkit.models.vit",
}

__all__ = [
    "Classifier",
    "LoadSettings",
    "ViT",
    "ViTConfig",
    "ViTOutput",
    "__version__",
    "evaluate",
    "load",
    "preset",
]

if TYPE_CHECKING:
    from vitkit.experiments.evaluation import evaluate
    from vitkit.inference.classifier import Classifier, load
    from vitkit.inference.settings import LoadSettings
    from vitkit.models.config import ViTConfig, preset
    from vitkit.models.vit import ViT, ViTOutput


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vitkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value
