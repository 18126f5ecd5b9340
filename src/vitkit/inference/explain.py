"""Where a ViT looks: attention rollout and last-layer [CLS] attention, drawn over the image.

Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", 2020):
each block's output is ``x + attn(x)``, so the information that reaches layer l+1 from token j is
modelled by ``0.5 * (A + I)``: the attention matrix with the residual path added as an identity.
Per layer we average the heads, add the identity, renormalise the rows (each row is then a
probability distribution again) and multiply the layers from the first to the last. The [CLS]
row of the product says how much each input patch contributed to the [CLS] token that the head
reads. The last-layer map is simpler: the [CLS] row of the final block's attention, heads
averaged. Both maps are renormalised over the patch tokens so they sum to one per image.

Prefix tokens ([CLS], and the distillation token of a DeiT student) are dropped from the maps;
``num_prefix_tokens`` (an attribute of the model, 1 for a plain ViT) says how many there are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitkit.atomic_files import atomic_write_bytes
from vitkit.images.decode import load_image
from vitkit.inference.classifier import Classifier, Prediction
from vitkit.models.protocol import require


# ---- the maps ---------------------------------------------------------------------------
def rollout_matrix(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Product of the per-layer (heads averaged, + identity, rows renormalised) matrices.

    ``attentions`` holds one (B, heads, N, N) tensor per layer, first layer first. Returns
    (B, N, N) whose rows each sum to one.
    """
    if not attentions:
        raise ValueError("attention rollout needs at least one layer of attention weights")
    batch, _, tokens, _ = attentions[0].shape
    identity = torch.eye(tokens, dtype=torch.float32, device=attentions[0].device)
    result = identity.expand(batch, tokens, tokens)
    for layer in attentions:
        averaged = layer.float().mean(dim=1) + identity
        averaged = averaged / averaged.sum(dim=-1, keepdim=True)
        # Later layers act on the output of earlier ones: left-multiply.
        result = averaged @ result
    return result


def _patch_map(
    cls_row: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]
) -> torch.Tensor:
    """(B, N) [CLS] row -> (B, rows, cols) map over the patches, summing to one per image."""
    patches = cls_row[:, num_prefix_tokens:]
    rows, cols = grid
    if patches.shape[1] != rows * cols:
        raise ValueError(
            f"{patches.shape[1]} patch tokens do not fill a {rows}x{cols} grid "
            f"(num_prefix_tokens={num_prefix_tokens})"
        )
    patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return patches.reshape(-1, rows, cols)


def attention_rollout(
    attentions: Sequence[torch.Tensor], grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """(B, rows, cols) rollout map of the [CLS] token over the patch grid (sums to one)."""
    return _patch_map(rollout_matrix(attentions)[:, 0], num_prefix_tokens, grid)


def last_layer_cls_attention(
    attentions: Sequence[torch.Tensor], grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """(B, rows, cols) attention of [CLS] to each patch in the last block, heads averaged."""
    return _patch_map(attentions[-1].float().mean(dim=1)[:, 0], num_prefix_tokens, grid)


@dataclass
class AttentionMaps:
    """Maps for a batch: each (B, rows, cols), summing to one per image; logits (B, classes)."""

    rollout: torch.Tensor
    last_layer: torch.Tensor
    logits: torch.Tensor | None


@torch.inference_mode()
def attention_maps(model: torch.nn.Module, pixel_values: torch.Tensor) -> AttentionMaps:
    """Run ``model`` (a vitkit ViT or DeiT student) once and compute both maps.

    UnsupportedOperationError (naming the model type) for a model without attention maps.
    """
    require(model, "attention_maps", "draw attention maps")
    output = model(pixel_values, output_attentions=True)
    config: Any = model.config
    patch_size = int(config.patch_size)
    grid = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    return AttentionMaps(
        rollout=attention_rollout(output.attentions, grid, prefix),
        last_layer=last_layer_cls_attention(output.attentions, grid, prefix),
        logits=output.logits,
    )


def quadrant_mass(attention_map: torch.Tensor) -> torch.Tensor:
    """(B, 4) share of each map in the top-left, top-right, bottom-left, bottom-right quadrant."""
    rows, cols = attention_map.shape[-2:]
    top, left = rows // 2, cols // 2
    parts = [
        attention_map[:, :top, :left],
        attention_map[:, :top, left:],
        attention_map[:, top:, :left],
        attention_map[:, top:, left:],
    ]
    return torch.stack([part.sum(dim=(-2, -1)) for part in parts], dim=1)


# ---- pictures ---------------------------------------------------------------------------
MIN_DISPLAY_SIDE = 224  # tiny inputs (8x8 digits) are enlarged so the overlay is readable


def _display_image(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    side = min(image.size)
    if side >= MIN_DISPLAY_SIDE:
        return image
    scale = -(-MIN_DISPLAY_SIDE // side)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def _heatmap_rgba(attention_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W, 4) float colour map of ``attention_map`` (min..max -> 0..1), resized to ``size``."""
    from matplotlib import colormaps

    # Colours span the map's own min..max: a nearly uniform map still shows where it peaks.
    low, high = float(attention_map.min()), float(attention_map.max())
    scaled = (attention_map - low) / max(high - low, 1e-12)
    resized = Image.fromarray((scaled * 255).astype(np.uint8)).resize(
        size, Image.Resampling.BILINEAR
    )
    return colormaps["inferno"](np.asarray(resized, dtype=np.float32) / 255.0)


def caption_text(predictions: Sequence[Prediction]) -> str:
    return "   ".join(f"{p['label']} {p['score']:.1%}" for p in predictions)


def overlay_png(
    image: Image.Image,
    rollout: np.ndarray,
    last_layer: np.ndarray,
    predictions: Sequence[Prediction],
    title: str | None = None,
) -> bytes:
    """A PNG: the image, rollout over the image, last-layer [CLS] attention over the image.

    The caption lists the top-k predictions. Drawn with matplotlib's object API (no pyplot), so
    it is safe to call from server threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = _display_image(image)
    pixels = np.asarray(shown, dtype=np.float32) / 255.0
    aspect = shown.height / shown.width
    figure = Figure(figsize=(9.6, 3.2 * aspect + 1.0), dpi=100)
    FigureCanvasAgg(figure)
    panels = [
        ("image", None),
        ("attention rollout", rollout),
        ("last-layer [CLS] attention", last_layer),
    ]
    for index, (name, attention_map) in enumerate(panels):
        axes = figure.add_subplot(1, 3, index + 1)
        axes.imshow(pixels)
        if attention_map is not None:
            heat = _heatmap_rgba(attention_map, shown.size)
            axes.imshow(heat[..., :3], alpha=0.55)
        axes.set_title(name, fontsize=10)
        axes.axis("off")
    caption = caption_text(predictions)
    figure.suptitle(title or "", fontsize=11)
    figure.text(0.5, 0.03, caption, ha="center", fontsize=10)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.84, bottom=0.1, wspace=0.04)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ---- images in --------------------------------------------------------------------------
def _as_classifier(classifier_or_model: Any) -> Classifier:
    if isinstance(classifier_or_model, Classifier):
        return classifier_or_model
    return Classifier(classifier_or_model, device="cpu")


def explain_image(
    classifier_or_model: Any, image: Any, top_k: int = 5, title: str | None = None
) -> tuple[bytes, list[Prediction]]:
    """(overlay PNG bytes, top-k predictions) for one image source (path, bytes, PIL, array...).

    ``classifier_or_model`` is a ``vitkit.Classifier`` or a bare ViT / DeiT student (then the
    checkpoint-default preprocessing for its config is used). This is what ``POST /v1/explain``
    and ``vitkit explain`` call.
    """
    classifier = _as_classifier(classifier_or_model)
    require(classifier.model, "attention_maps", "draw attention maps")
    picture = image if isinstance(image, Image.Image) else load_image(image)
    pixel_values = classifier.prepare([picture]).to(classifier.device)
    maps = attention_maps(classifier.model, pixel_values)
    predictions: list[Prediction] = []
    if maps.logits is not None:
        head = classifier.require_head()  # softmax, or sigmoid + thresholds
        predictions = head.answer(head.probabilities(maps.logits[:1]), top_k)[0]
    png = overlay_png(
        picture, maps.rollout[0].cpu().numpy(), maps.last_layer[0].cpu().numpy(), predictions, title
    )
    return png, predictions


def explain_files(
    classifier_or_model: Any, sources: Sequence[str], out_dir: str | Path, top_k: int = 5
) -> list[dict[str, Any]]:
    """Write ``<stem>.explain.png`` per source into ``out_dir``; return one record per image."""
    classifier = _as_classifier(classifier_or_model)
    require(classifier.model, "attention_maps", "draw attention maps")  # before any file is made
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    used: set[str] = set()
    for source in sources:
        stem = Path(str(source).split("?")[0]).stem or "image"
        name = stem
        suffix = 1
        while name in used:  # two inputs called a.png in different folders
            suffix += 1
            name = f"{stem}-{suffix}"
        used.add(name)
        png, predictions = explain_image(classifier, source, top_k=top_k, title=str(source))
        path = out / f"{name}.explain.png"
        atomic_write_bytes(path, png)
        records.append({"input": str(source), "output": str(path), "predictions": predictions})
    return records
