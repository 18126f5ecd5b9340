"""The slides of a slide table, embedded: each row's embeddings file, made first when missing.

A row names its slide by id or path. Its embeddings are, first that applies: the table's
``embeddings`` column; ``EMBEDDINGS/<slide name>/embeddings.parquet`` (what ``vitkit slide
--embed --out EMBEDDINGS`` writes for that slide); or, when the slide is a file and an encoder
is given, made now by ``run_slide`` into that folder (resumable: a killed run picks up where it
stopped, and finished slides are skipped).

Every slide must come from one encoder with one tiling (a model learns one embedding space):
both are read from the slides' ``summary.json`` and refused when they differ; they are saved
with the model (``vitkit.checkpoints.mil``) so a new slide is embedded the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitkit.errors import DatasetError
from vitkit.inference.classifier import load
from vitkit.slides.runner import SUMMARY, SlideSettings, run_slide, slide_folder
from vitkit.training.tasks.mil_config import MILSettings
from vitkit.training.tasks.mil_data import SlideRow

EMBEDDINGS_FILE = "embeddings.parquet"
# SlideSettings fields that decide which tiles a slide gives (saved as the model's tiling)
TILING_FIELDS = ("level", "mpp", "tile_size", "stride", "min_tissue", "reader", "thumbnail_side")
Report = Callable[[str], None]
# a slide -> its progress callback ``(tiles done, tiles in all)`` (a progress bar's)
SlideProgress = Callable[[Path], Callable[[int, int], None]]


@dataclass
class EmbeddedRows:
    """The rows with their embeddings, and how those were made (empty when unknown)."""

    rows: list[SlideRow]
    encoder: dict[str, Any] = field(default_factory=dict)
    tiling: dict[str, Any] = field(default_factory=dict)
    embedded_now: list[str] = field(default_factory=list)


def embed_rows(
    rows: Sequence[SlideRow],
    settings: MILSettings,
    table: Path,
    *,
    device: str | None = None,
    tiles: SlideSettings | None = None,
    report: Report | None = None,
    progress: SlideProgress | None = None,
) -> EmbeddedRows:
    """Each row with its embeddings file (embedding the missing slides with ``settings.encoder``
    and, when no slide is embedded yet, the tiling of ``tiles``)."""
    say = report or (lambda message: None)
    found, missing = [], []
    for row in rows:
        path = _existing_embeddings(row, settings)
        if path is not None:
            found.append(dataclasses.replace(row, embeddings=str(path)))
        else:
            missing.append(row)
    encoder, tiling = provenance([Path(r.embeddings or "") for r in found])
    _check_tiling(tiles, tiling, f" under {settings.embeddings}" if settings.embeddings else "")
    embedded_now = []
    if missing:
        encoder, tiling = _plan_missing(missing, settings, table, encoder, tiling, tiles)
        classifier = _load_encoder(encoder, device)
        for row in missing:
            slide = _slide_file(row, table)
            folder = slide_folder(Path(settings.embeddings or ""), slide)
            say(f"embedding {slide} -> {folder}")
            run_slide(
                slide,
                classifier,
                folder,
                slide_settings(encoder, tiling),
                progress=progress(slide) if progress else None,
            )
            found.append(dataclasses.replace(row, embeddings=str(folder / EMBEDDINGS_FILE)))
            embedded_now.append(row.slide)
        encoder, tiling = provenance([Path(r.embeddings or "") for r in found])
    order = {row.slide: index for index, row in enumerate(rows)}
    found.sort(key=lambda r: order[r.slide])
    return EmbeddedRows(found, encoder, tiling, embedded_now)


def _existing_embeddings(row: SlideRow, settings: MILSettings) -> Path | None:
    if row.embeddings is not None:
        path = Path(row.embeddings)
        if not path.is_file():
            raise DatasetError(f"slide {row.slide}: its embeddings file {path} does not exist")
        return path
    if settings.embeddings is None:
        return None
    folder = slide_folder(Path(settings.embeddings), Path(row.slide))
    path = folder / EMBEDDINGS_FILE
    return path if path.is_file() and _complete(folder) else None


def _complete(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / SUMMARY).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def _plan_missing(
    missing: list[SlideRow],
    settings: MILSettings,
    table: Path,
    encoder: dict[str, Any],
    tiling: dict[str, Any],
    tiles: SlideSettings | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The encoder and tiling for the slides to embed now: those of the slides embedded
    already, if any (a tiling asked for that differs is refused), else ``tiles``."""
    first = missing[0]
    where = f" under {settings.embeddings}" if settings.embeddings else ""
    if settings.encoder is None or settings.embeddings is None:
        raise DatasetError(
            f"slide {first.slide} (and {len(missing) - 1} more) has no embeddings{where}: embed "
            "them with `vitkit slide SLIDES --embed --model ENCODER --out DIR`, or pass "
            "--embeddings DIR --encoder ENCODER to embed them now"
        )
    for row in missing:
        _slide_file(row, table)  # every missing slide must be a file, before any work
    name = resolve_model_name(settings.encoder)
    if encoder and encoder.get("model") != name:
        raise DatasetError(
            f"--encoder {settings.encoder}: the slides already embedded{where} were embedded "
            f"with {encoder.get('model')}; a model learns one embedding space: embed with that"
        )
    if not tiling:
        asked = tiles or SlideSettings()
        return {"model": name, "pool": asked.pool}, {k: getattr(asked, k) for k in TILING_FIELDS}
    return encoder, tiling


def _check_tiling(tiles: SlideSettings | None, tiling: dict[str, Any], where: str) -> None:
    """A tiling asked for (a value other than the default) that the embedded slides lack."""
    if tiles is None or not tiling:
        return
    default = SlideSettings()
    for key in TILING_FIELDS:
        asked = getattr(tiles, key)
        if asked != getattr(default, key) and asked != tiling.get(key):
            raise DatasetError(
                f"--{key.replace('_', '-')} {asked}: the slides already embedded{where} used "
                f"{tiling.get(key)}; a model learns one tiling: leave it out"
            )


def _slide_file(row: SlideRow, table: Path) -> Path:
    for candidate in (Path(row.slide), table.parent / row.slide):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"slide {row.slide}: not embedded yet and no such slide file (looked at {row.slide} "
        f"and {table.parent / row.slide}); list the slide's path in the table"
    )


def _load_encoder(encoder: dict[str, Any], device: str | None) -> Any:

    return load(
        encoder["model"],
        device=device,
        image_size=encoder.get("image_size"),
        precision=encoder.get("precision", "fp32"),
    )


def slide_settings(encoder: dict[str, Any], tiling: dict[str, Any]) -> SlideSettings:
    """The SlideSettings that embed a slide as the model's training slides were."""
    return SlideSettings(**tiling, embed=True, pool=encoder.get("pool"))


def resolve_model_name(name: str) -> str:
    """A model given as a path, made absolute (so a saved MIL model finds it from anywhere)."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name


# ---- how embeddings were made -----------------------------------------------------------------
def provenance(paths: Sequence[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoder, tiling) shared by the slides whose embeddings are ``paths``, from the
    ``summary.json`` beside each; empty when none has one; DatasetError when they differ."""
    seen: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for path in paths:
        try:
            summary = json.loads((path.parent / SUMMARY).read_text())
        except (OSError, ValueError):
            continue
        encoder, tiling = _from_summary(summary)
        key = json.dumps([encoder, tiling], sort_keys=True)
        seen.setdefault(key, (str(path.parent), encoder, tiling))
    if not seen:
        return {}, {}
    if len(seen) > 1:
        (first, a, at), (second, b, bt) = list(seen.values())[:2]
        raise DatasetError(
            f"{first} and {second} were embedded differently ({a}, {at} vs {b}, {bt}); a slide "
            "model learns one embedding space: embed every slide with one encoder and tiling"
        )
    _, encoder, tiling = next(iter(seen.values()))
    return encoder, tiling


def _from_summary(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    model, settings = summary.get("model", {}), summary.get("settings", {})
    model_input = summary.get("tiles", {}).get("model_input") or [None]
    encoder = {
        "model": resolve_model_name(str(model.get("name"))),
        "image_size": model_input[0],
        "pool": settings.get("pool"),
        "precision": model.get("precision", "fp32"),
    }
    tiling = {name: settings.get(name) for name in TILING_FIELDS if name in settings}
    return encoder, tiling
