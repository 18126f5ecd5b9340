"""A slide-level model over new slides: from the slide file (or its embeddings) to the outputs.

``predict_slide(model, source, out_root)`` takes a slide file or a folder ``vitkit slide
--embed`` wrote. A slide file is first embedded exactly as the model's training slides were
(the encoder and tiling saved with the model; ``run_slide``, so resumable) into
``OUT/<slide>/``; a folder is read where it is and the outputs go to ``OUT/<folder name>/``.
Then the network runs on every tile's embedding at once (no sampling at prediction time) and
``vitkit.slides.mil_outputs`` writes what a pathologist looks at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.checkpoints.mil import MILModel
from vitkit.errors import SlideError
from vitkit.inference.classifier import load
from vitkit.slides import mil_outputs
from vitkit.slides.mil_inputs import EMBEDDINGS_FILE, SlideProgress, slide_settings
from vitkit.slides.runner import SUMMARY, run_slide, slide_folder
from vitkit.training.tasks.mil_config import MILPredictSettings
from vitkit.training.tasks.mil_data import read_bag


@dataclass
class SlidePrediction:
    slide: str
    out_dir: Path
    probabilities: dict[str, float]
    predicted: list[str]  # the arg-max class, or every label at or above 0.5
    tiles: int


class EncoderCache:
    """The tile encoder, loaded once for all the slide files of a call."""

    def __init__(self, model: MILModel, device: str | None) -> None:
        self.model, self.device = model, device
        self._classifier: Any = None

    def get(self) -> Any:
        if self._classifier is None:
            encoder = self.model.encoder
            self._classifier = load(
                encoder["model"],
                device=self.device,
                image_size=encoder.get("image_size"),
                precision=encoder.get("precision", "fp32"),
            )
        return self._classifier


def predict_slide(
    model: MILModel,
    source: str | Path,
    out_root: str | Path,
    settings: MILPredictSettings | None = None,
    *,
    encoder: EncoderCache | None = None,
    progress: SlideProgress | None = None,
) -> SlidePrediction:
    """Predict one slide file or embedding folder into ``out_root/<name>/`` (``progress``: a
    callback per slide embedded now, as ``vitkit.slides.run_slide`` takes)."""
    settings = settings or MILPredictSettings()
    source, out_root = Path(source), Path(out_root)
    cache = encoder or EncoderCache(model, None)
    folder, out_dir = _embedded(model, source, out_root, cache, progress)
    summary = json.loads((folder / SUMMARY).read_text())
    features = read_bag(folder / EMBEDDINGS_FILE)
    if features.shape[1] != model.config.input_dim:
        raise SlideError(
            f"{folder}: its tile embeddings are {features.shape[1]}-d, the model takes "
            f"{model.config.input_dim}-d: embed with {model.encoder.get('model', 'the training encoder')}"
        )
    probabilities, attention = run_network(model, features)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiles = mil_outputs.read_tile_table(folder)
    mil_outputs.write_tile_tables(out_dir, tiles, attention)
    if settings.geojson:
        mil_outputs.write_geojson(out_dir, tiles, attention)
    if settings.heatmap:
        mil_outputs.write_heatmap(
            out_dir, folder, summary, tiles, attention, scale=settings.heatmap_scale
        )
    if settings.gallery:
        mil_outputs.write_gallery(out_dir, summary, tiles, attention, settings.top_k)
    prediction = _prediction(
        model, str(summary.get("slide", source)), out_dir, probabilities, len(features)
    )
    mil_outputs.write_prediction(
        out_dir,
        {
            "slide": prediction.slide,
            "predicted": prediction.predicted,
            "probabilities": prediction.probabilities,
            "tiles": prediction.tiles,
            "model": str(model.source) if model.source else None,
            "problem_type": model.config.problem_type,
        },
    )
    return prediction


def _embedded(
    model: MILModel,
    source: Path,
    out_root: Path,
    encoder: EncoderCache,
    progress: SlideProgress | None,
) -> tuple[Path, Path]:
    """(folder holding the slide's embeddings, folder for its outputs)."""
    if source.is_dir():
        if not (source / EMBEDDINGS_FILE).is_file() or not (source / SUMMARY).is_file():
            raise SlideError(
                f"{source}: not a finished `vitkit slide --embed` folder (no {EMBEDDINGS_FILE} "
                f"and {SUMMARY}); give the slide file, or embed it first"
            )
        return source, out_root / source.name
    if not source.is_file():
        raise SlideError(f"{source}: no such slide file or embedding folder")
    if not model.encoder.get("model"):
        raise SlideError(
            f"{source}: the model does not name the tile encoder of its training embeddings "
            "(they were made elsewhere): embed the slide with that encoder (`vitkit slide "
            "--embed`) and give the folder"
        )
    out_dir = slide_folder(out_root, source)
    settings = slide_settings(model.encoder, model.tiling)
    run_slide(
        source, encoder.get(), out_dir, settings, progress=progress(source) if progress else None
    )
    return out_dir, out_dir


@torch.no_grad()
def run_network(model: MILModel, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (classes,), attention (tiles,)) of one bag, in eval mode."""
    network = model.network.eval()
    device = next(network.parameters()).device
    output = network(torch.from_numpy(features).to(device))
    logits = output.logits.float()[0]
    scores = logits.sigmoid() if model.multi_label else logits.softmax(-1)
    return scores.cpu().numpy(), output.attention.float().cpu().numpy()


def _prediction(
    model: MILModel, slide: str, out_dir: Path, scores: np.ndarray, tiles: int
) -> SlidePrediction:
    labels = model.labels
    if model.multi_label:
        predicted = [label for label, s in zip(labels, scores, strict=True) if s >= 0.5]
    else:
        predicted = [labels[int(scores.argmax())]]
    probabilities = {label: round(float(s), 6) for label, s in zip(labels, scores, strict=True)}
    return SlidePrediction(slide, out_dir, probabilities, predicted, tiles)
