"""A classifier over many image sources in one process: decode ahead, predict or embed, and
keep going past bad inputs (what ``vitkit predict`` and ``vitkit embed`` run without Ray).

    from vitkit.inference.files import predict_sources
    records = predict_sources(vitkit.load("runs/vit/best"), ["a.jpg", "b.png"], top_k=3)

Each bad input (missing, truncated, not an image, a refused URL) becomes an error naming it,
in its place; the others are still answered, which is what a folder of mixed quality needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.atomic_files import atomic_open
from vitkit.errors import UsageError, VitkitError
from vitkit.images.processor import PreparedBatch
from vitkit.inference.classifier import Classifier
from vitkit.models.protocol import Pool, check_pool

Progress = Callable[[int], Any]  # called with the number of inputs just finished
EMBEDDING_SUFFIXES = (".npy", ".npz", ".parquet")


def prepared_batches(
    classifier: Classifier, sources: Sequence[str], *, batch_size: int, workers: int
) -> Iterator[tuple[list[str], PreparedBatch]]:
    """(chunk of sources, PreparedBatch) pairs: decode + preprocess in ``workers`` threads, one
    batch ahead, so the next batch is decoded while the caller runs the model on this one.
    A bad input lands in the batch's ``errors`` (by position in the chunk)."""
    items = list(sources)
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]

    def prepare(chunk: list[str]) -> PreparedBatch:
        return classifier.processor.load_batch(
            chunk, workers=workers, mode=classifier.processor_mode
        )

    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitkit-prefetch") as ahead:
        pending = ahead.submit(prepare, chunks[0])
        for index, chunk in enumerate(chunks):
            batch = pending.result()
            if index + 1 < len(chunks):
                pending = ahead.submit(prepare, chunks[index + 1])
            yield chunk, batch


def predict_sources(
    classifier: Classifier,
    sources: Sequence[str],
    *,
    top_k: int | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """One record per source, in order: ``{"input", "predictions"}`` (``Classifier.predict``'s
    answer) or ``{"input", "error"}``."""
    classifier.require_head()  # fail once, with the pointer to `embed`, not once per input
    records: dict[str, dict[str, Any]] = {}
    for chunk, batch in prepared_batches(
        classifier, sources, batch_size=batch_size, workers=workers
    ):
        for index, error in batch.errors.items():
            records[chunk[index]] = {"input": chunk[index], "error": str(error)}
        if batch.indices:
            predictions = classifier.predict_tensor(batch.pixel_values, top_k)
            for index, top in zip(batch.indices, predictions, strict=True):
                records[chunk[index]] = {"input": chunk[index], "predictions": top}
        if progress is not None:
            progress(len(chunk))
    return [records[source] for source in sources]


@dataclass
class Embeddings:
    """``matrix[i]`` embeds ``names[i]``; ``errors``: the sources that failed, and why."""

    names: list[str]
    matrix: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)


def embed_sources(
    classifier: Classifier,
    sources: Sequence[str],
    *,
    pool: Pool | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: Progress | None = None,
) -> Embeddings:
    """One embedding per readable source (``pool``: one of the model's, default its own)."""
    chosen: Any = pool or classifier.default_pool
    check_pool(classifier.model, chosen)  # once, before any image is decoded
    names: list[str] = []
    vectors: list[np.ndarray] = []
    errors: dict[str, str] = {}
    for chunk, batch in prepared_batches(
        classifier, sources, batch_size=batch_size, workers=workers
    ):
        errors.update({chunk[index]: str(error) for index, error in batch.errors.items()})
        if batch.indices:
            vectors.append(classifier.embed_tensor(batch.pixel_values, chosen).cpu().numpy())
            names.extend(chunk[index] for index in batch.indices)
        if progress is not None:
            progress(len(chunk))
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    return Embeddings(names, matrix, errors)


def check_embeddings_path(path: Path) -> None:
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise UsageError(f"--out {path}: use a .npy, .npz or .parquet file name")


def write_embeddings(path: Path, embeddings: Embeddings) -> None:
    """.npy (the matrix), .npz (with the input names and failed inputs) or .parquet (input,
    embedding); written whole or not at all (a temporary file renamed into place)."""
    check_embeddings_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    matrix = embeddings.matrix
    if suffix in (".npy", ".npz"):
        with atomic_open(path) as handle:
            if suffix == ".npy":
                np.save(handle, matrix)
            else:
                np.savez(
                    handle,
                    embeddings=matrix,
                    inputs=np.array(embeddings.names, dtype=str),
                    failed_inputs=np.array(list(embeddings.errors), dtype=str),
                )
        return
    try:
        import pyarrow as pa  # optional: vitkit[parquet]
        import pyarrow.parquet as pq
    except ImportError as error:
        raise VitkitError(
            "writing .parquet needs pyarrow: pip install 'vitkit[parquet]'"
        ) from error
    # A fixed-size list column straight from the float32 buffer: no per-row Python lists.
    column = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    table = pa.table({"input": embeddings.names, "embedding": column})
    with atomic_open(path) as handle:
        pq.write_table(table, handle)
