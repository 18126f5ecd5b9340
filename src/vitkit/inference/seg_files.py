"""A segmentation model over many image sources: decode ahead, segment, write each mask,
overlay and the class areas, and keep going past bad inputs (``vitkit predict``).

    OUT/masks/NAME.png      palette PNG of class indices, the image's own size
    OUT/overlays/NAME.png   the image with the classes painted on it, and a legend
    OUT/areas.json          [{"input", "mask", "overlay", "size", "areas": [{class, label,
                            pixels, fraction}]}] in input order (errors: {"input", "error"})
    OUT/areas.csv           input,mask,label,pixels,fraction (one row per class and image)

NAME is the input's file name without its suffix (made unique by a counter when two inputs
share one). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.atomic_files import atomic_write_bytes, atomic_write_text
from vitkit.errors import VitkitError
from vitkit.images.masks import class_areas, mask_png_bytes, overlay
from vitkit.inference.seg_settings import MaskOutputSettings
from vitkit.inference.segmentation import SegmentationRunner

Progress = Callable[[int], Any]
Prepared = tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | VitkitError  # uint8, input, size


def _prepare(runner: SegmentationRunner, source: str) -> Prepared:
    try:
        decoded = runner.processor.decode(source)
        size = (int(decoded.shape[-2]), int(decoded.shape[-1]))
        return decoded, runner.processor.prepare_uint8(decoded), size
    except VitkitError as error:
        return error


def _prepared_chunks(
    runner: SegmentationRunner, sources: Sequence[str], batch_size: int, workers: int
) -> Iterator[tuple[list[str], list[Prepared]]]:
    """Chunks of sources with their decoded and preprocessed images, decoded in ``workers``
    threads one chunk ahead of the model."""
    chunks = [list(sources[i : i + batch_size]) for i in range(0, len(sources), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="vitkit-seg") as pool:
        futures = [[pool.submit(_prepare, runner, s) for s in chunk] for chunk in chunks[:1]]
        for index, chunk in enumerate(chunks):
            if index + 1 < len(chunks):
                futures.append([pool.submit(_prepare, runner, s) for s in chunks[index + 1]])
            yield chunk, [future.result() for future in futures[index]]


def unique_names(sources: Sequence[str]) -> list[str]:
    """A file-system-safe stem per source, unique among them."""
    seen: dict[str, int] = {}
    names = []
    for source in sources:
        stem = Path(source.split("?")[0].rstrip("/")).stem or "image"
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:100]
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}_{count}")
    return names


def segment_sources(
    runner: SegmentationRunner,
    sources: Sequence[str],
    settings: MaskOutputSettings,
    *,
    batch_size: int = 16,
    workers: int = 2,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Segment every source and write its files (see the module docstring); one record each."""
    assert settings.masks_out is not None
    out = Path(settings.masks_out)
    names = dict(zip(sources, unique_names(sources), strict=True))
    records: list[dict[str, Any]] = []
    for chunk, prepared in _prepared_chunks(runner, sources, batch_size, workers):
        good = [
            (s, p) for s, p in zip(chunk, prepared, strict=True) if not isinstance(p, VitkitError)
        ]
        masks = _masks(runner, [p for _, p in good])
        answers = {source: mask for (source, _), mask in zip(good, masks, strict=True)}
        for source, item in zip(chunk, prepared, strict=True):
            if isinstance(item, VitkitError):
                records.append({"input": source, "error": str(item)})
                continue
            record = _write_one(runner, out, names[source], item[0], answers[source], settings)
            records.append({"input": source, **record})
        if progress is not None:
            progress(len(chunk))
    write_area_tables(records, out)
    return records


def _masks(
    runner: SegmentationRunner, prepared: list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]
) -> list[np.ndarray]:
    """Masks at each image's size; images that preprocess to the same shape share a forward."""
    masks: list[np.ndarray | None] = [None] * len(prepared)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for index, (_, pixels, _) in enumerate(prepared):
        shapes.setdefault(tuple(pixels.shape), []).append(index)
    for members in shapes.values():
        batch = torch.stack([prepared[i][1] for i in members])
        found = runner.masks(batch, [prepared[i][2] for i in members])
        for index, mask in zip(members, found, strict=True):
            masks[index] = mask
    return [mask for mask in masks if mask is not None]


def _write_one(
    runner: SegmentationRunner,
    out: Path,
    name: str,
    image: torch.Tensor,
    mask: np.ndarray,
    settings: MaskOutputSettings,
) -> dict[str, Any]:
    mask_path = out / "masks" / f"{name}.png"
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(mask_path, mask_png_bytes(mask))
    record: dict[str, Any] = {"mask": str(mask_path), "size": list(mask.shape)}
    if settings.overlays:
        pixels = image.permute(1, 2, 0).contiguous().numpy()[..., :3]
        picture = overlay(pixels, mask, runner.labels, alpha=settings.overlay_alpha)
        overlay_path = out / "overlays" / f"{name}.png"
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        atomic_write_bytes(overlay_path, buffer.getvalue())
        record["overlay"] = str(overlay_path)
    record["areas"] = class_areas(mask, runner.labels)
    return record


def write_area_tables(records: list[dict[str, Any]], out: Path) -> None:
    """areas.json (the records) and areas.csv (one row per image and class)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "areas.json", json.dumps(records, indent=1) + "\n")
    atomic_write_text(out / "areas.csv", area_csv(records))


def area_csv(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["input", "mask", "class", "label", "pixels", "fraction", "error"])
    for record in records:
        if "error" in record:
            writer.writerow([record["input"], "", "", "", "", "", record["error"]])
            continue
        for row in record["areas"]:
            writer.writerow(
                [record["input"], record["mask"], row["class"], row["label"], row["pixels"],
                 f"{row['fraction']:.6f}", ""]
            )  # fmt: skip
    return buffer.getvalue()
