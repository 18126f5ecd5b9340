"""What a checkpoint is: ``describe(loaded)`` gives the facts ``vitkit info`` prints (format,
architecture, family, default embedding, size, cost per image, head), as a JSON-ready dict."""

from __future__ import annotations

import dataclasses
from typing import Any

from vitkit.inference.heads import head_for


def describe(model: Any, source: str, checkpoint_format: str) -> dict[str, Any]:
    """The facts of a loaded model (any registered model type)."""
    config = model.config
    height, width = config.image_hw
    labels = config.labels()
    facts: dict[str, Any] = {
        "source": source,
        "format": checkpoint_format,
        "model_type": config.model_type,
        "family": getattr(config, "family", "") or config.model_type,
        "embedding": default_embedding(model),
        "config": {
            name: (list(value) if isinstance(value, tuple) else value)
            for name, value in dataclasses.asdict(config).items()
            if name != "id2label"
        },
        "parameters": model.num_parameters(),
        "gflops_per_image": model.flops_per_image() / 1e9,
        "resolution": f"{height}x{width}",
        "labels": labels[:5] + (["..."] if len(labels) > 5 else []),
        "num_labels": config.num_labels,
        "segmentation": bool(getattr(model.capabilities, "dense", False)),  # a class per pixel
        "embeddings": list(model.capabilities.pools),
    }
    if config.num_labels:  # softmax, or sigmoid + thresholds (vitkit.inference.heads)
        facts["head"] = head_for(config, labels).describe()
    if hasattr(config, "num_patches"):  # a transformer: its sequence length
        facts["tokens"] = config.num_patches + model.num_prefix_tokens
    return facts


def default_embedding(model: Any) -> dict[str, Any]:
    """What `vitkit embed` gives without --pool, and its width (when the model can say)."""
    pool = model.capabilities.default_pool
    size_of = getattr(model, "embedding_size", None)
    return {"pool": pool, "size": size_of(pool) if callable(size_of) else None}


def head_kind(card: dict[str, Any]) -> str:
    """A head's card (``Head.describe``) in words: single-label, or multi-label with thresholds."""
    if card["activation"] == "softmax":
        return "single-label (softmax)"
    thresholds = list(card["thresholds"].values())
    low, high = min(thresholds), max(thresholds)
    span = f"{low:g}" if low == high else f"{low:g}..{high:g}"
    return f"multi-label (sigmoid), thresholds {span}"
