"""Callable classes for ``ray.data.Dataset.map_batches``: one vitkit model per worker, batches of
images in, predictions or embeddings out.

    import ray
    from vitkit.engines.batch import VitkitPredictor

    photos = ray.data.read_parquet("s3://bucket/catalogue/")     # an "image" column of JPEG bytes
    predictions = photos.map_batches(
        VitkitPredictor,
        fn_constructor_kwargs={"model": "google/vit-base-patch16-224", "top_k": 5},
        compute=ray.data.ActorPoolStrategy(size=4),
        num_gpus=1,
        batch_size=64,
    )

Ray builds the class once per actor, so the model loads once per worker and stays there. The
image column holds encoded bytes, paths, URLs (fetched through vitkit's SSRF-guarded client) or
pixel arrays (what ``ray.data.read_images`` makes); it is found by name (``IMAGE_COLUMNS``) unless
``image_column`` says which. Every other column passes through (an ``id``, say). A bad image does
not fail the batch: its row gets the reason in ``error`` and nulls in the result columns.

Nothing here imports Ray: a batch is any table-like value (Ray's dict of numpy arrays, a pandas
DataFrame, a pyarrow Table), so the classes also run on their own, one batch at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from vitkit.engines.decode import PIXELS, decoded_batch
from vitkit.engines.sources import IMAGE_COLUMNS
from vitkit.errors import EngineError
from vitkit.inference import runtime
from vitkit.inference.classifier import Classifier, load_settings
from vitkit.inference.settings import LoadSettings
from vitkit.models.protocol import check_pool


def load_for_worker(settings: LoadSettings, *, tune_process: bool = False) -> Classifier:
    """The classifier a worker holds: ``vitkit.load`` with these settings, whole (URLs fetched
    from public addresses only unless ``allow_private_urls`` or ``allow_hosts`` say otherwise).
    ``tune_process``: the process-wide inference settings ``vitkit predict`` makes
    (``runtime.tune_process_for_inference``), for workers that run nothing else. ``device``
    None: the GPU Ray gave this worker, if any."""
    if tune_process:  # the worker is the job's process: its entry point may opt in
        runtime.tune_process_for_inference(settings.device)
    return load_settings(settings)


def worker_settings(model: str | LoadSettings | None, fields: dict[str, Any]) -> LoadSettings:
    """``model`` as LoadSettings (a checkpoint name, or the settings whole), with ``fields``
    (LoadSettings field names) on top."""
    settings = model if isinstance(model, LoadSettings) else LoadSettings(model=model)
    return settings.replace(**fields) if fields else settings


class BatchModel:
    """What the predictor and the embedder share: the model per worker, decoding, the error column.

    ``model``: a ``LoadSettings``, or anything ``vitkit.load`` takes (an HF directory, hub id,
    timm file, .npz) with ``settings`` (LoadSettings fields: precision, tta, allow_hosts, ...)
    on top; on a cluster every worker must reach the checkpoint (shared storage or a hub id).
    ``decode_threads``: images decoded in parallel per batch (match the worker's CPUs);
    ``tune_process``: see ``load_for_worker``.
    """

    def __init__(
        self,
        model: str | LoadSettings | None,
        *,
        image_column: str | None = None,
        decode_threads: int = 1,
        tune_process: bool = False,
        **settings: Any,
    ) -> None:
        self.classifier = load_for_worker(
            worker_settings(model, settings), tune_process=tune_process
        )
        self.image_column = image_column
        self.decode_threads = decode_threads

    def __call__(self, batch: Any) -> pa.Table:
        columns = as_columns(batch)
        if PIXELS in columns:  # decoded by a stage of its own (vitkit.engines.decode)
            name = PIXELS
            pixel_values, indices, failed = decoded_batch(
                columns, self.classifier.processor, self.classifier.device
            )
        else:
            name = self.image_column or find_image_column(columns)
            images = [image_value(value) for value in columns[name]]
            prepared = self.classifier.processor.load_batch(
                images, workers=self.decode_threads, mode=self.classifier.processor_mode
            )
            pixel_values, indices = prepared.pixel_values, prepared.indices
            failed = {index: str(error) for index, error in prepared.errors.items()}
        rows = len(columns[name])
        errors = [failed.get(index) for index in range(rows)]
        kept = {
            key: values
            for key, values in columns.items()
            if key != "error" and keeps_column(key, name, values)
        }
        results = self.results(pixel_values, indices, rows)
        return pa.table({**passthrough(kept), **results, "error": pa.array(errors, pa.string())})

    def results(self, pixel_values: Any, indices: list[int], rows: int) -> dict[str, pa.Array]:
        """The result columns, ``rows`` long, null where an image failed (not in ``indices``)."""
        raise NotImplementedError


class VitkitPredictor(BatchModel):
    """Per image, ``predictions``: the list ``vitkit predict --format json`` gives (``{label,
    score}`` best first; multi-label heads add ``threshold`` and ``positive``), and the best
    one's ``label`` and ``score`` as columns of their own. ``top_k`` None: the head's default."""

    def __init__(
        self, model: str | LoadSettings | None, *, top_k: int | None = None, **options: Any
    ) -> None:
        super().__init__(model, **options)
        head = self.classifier.require_head()  # fail at start-up, not once per batch
        self.top_k = top_k
        fields = [("label", pa.string()), ("score", pa.float64())]
        if head.multi_label:
            fields += [("threshold", pa.float64()), ("positive", pa.bool_())]
        self.predictions_type = pa.list_(pa.struct(fields))

    def results(self, pixel_values: Any, indices: list[int], rows: int) -> dict[str, pa.Array]:
        answers: list[list[dict[str, Any]] | None] = [None] * rows
        if indices:
            predictions = self.classifier.predict_tensor(pixel_values, self.top_k)
            for index, answer in zip(indices, predictions, strict=True):
                answers[index] = answer
        return {
            "label": pa.array([a[0]["label"] if a else None for a in answers], pa.string()),
            "score": pa.array([a[0]["score"] if a else None for a in answers], pa.float64()),
            "predictions": pa.array(answers, self.predictions_type),
        }


class VitkitEmbedder(BatchModel):
    """One ``embedding`` per image (a fixed-size float32 list), the vectors ``vitkit embed``
    gives; ``pool`` one the model offers (None: its default, [CLS] for a ViT)."""

    def __init__(
        self, model: str | LoadSettings | None, *, pool: str | None = None, **options: Any
    ) -> None:
        super().__init__(model, **options)
        self.pool = pool or self.classifier.default_pool
        if self.pool == "tokens":
            raise EngineError("pool 'tokens' gives a matrix per image: use cls, mean or pooler")
        check_pool(self.classifier.model, self.pool)  # at start-up, not once per batch

    def results(self, pixel_values: Any, indices: list[int], rows: int) -> dict[str, pa.Array]:
        if indices:
            pool: Any = self.pool
            vectors = self.classifier.embed_tensor(pixel_values, pool).cpu().numpy()
        else:
            vectors = np.zeros((0, self.embedding_size()), dtype=np.float32)
        dim = vectors.shape[1]
        matrix = np.zeros((rows, dim), dtype=np.float32)
        matrix[indices] = vectors
        failed = np.ones(rows, dtype=bool)
        failed[indices] = False
        values = pa.array(matrix.reshape(-1), pa.float32())
        return {"embedding": pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(failed))}

    def embedding_size(self) -> int:
        """The vector size, for a batch in which no image decoded (one blank forward, cached)."""
        if not hasattr(self, "_size"):
            height, width = self.classifier.processor.size
            blank = torch.zeros((1, 3, height, width))
            self._size = int(self.classifier.embed_tensor(blank, self.pool).shape[-1])  # type: ignore[arg-type]
        return self._size


# ---- batches as columns ------------------------------------------------------------------------
def as_columns(batch: Any) -> dict[str, Sequence[Any]]:
    """Ray's dict of numpy arrays, a pandas DataFrame or a pyarrow Table -> column name -> values."""
    if isinstance(batch, pa.Table):
        return {name: batch.column(name) for name in batch.column_names}
    if isinstance(batch, Mapping):
        return dict(batch)
    if hasattr(batch, "columns") and hasattr(batch, "__getitem__"):  # pandas, without importing it
        return {str(name): batch[name].to_numpy() for name in batch.columns}
    raise EngineError(
        f"a batch must be a dict of arrays, a pandas DataFrame or a pyarrow Table, "
        f"not {type(batch).__name__}"
    )


def find_image_column(columns: Mapping[str, Any]) -> str:
    found = next((name for name in IMAGE_COLUMNS if name in columns), None)
    if found is None:
        raise EngineError(
            f"no image column in the batch (columns: {', '.join(columns) or 'none'}): name one "
            f"of {', '.join(IMAGE_COLUMNS)} or pass image_column="
        )
    return found


def image_value(value: Any) -> Any:
    """One cell of the image column as vitkit's decoder takes it (bytes, str path/URL, array)."""
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    if isinstance(value, dict) and "bytes" in value:  # Hugging Face datasets' Image feature
        value = value["bytes"] if value["bytes"] is not None else value.get("path")
    return value


def keeps_column(name: str, image_column: str, values: Any) -> bool:
    """Every column but the image one passes through; so does an image column of paths or URLs
    (small, and it names the input), never one of bytes or pixels."""
    if name != image_column:
        return True
    first = image_value(values[0]) if len(values) else None
    return isinstance(first, str)


def passthrough(columns: Mapping[str, Any]) -> dict[str, pa.Array | pa.ChunkedArray]:
    arrays: dict[str, pa.Array | pa.ChunkedArray] = {}
    for name, values in columns.items():
        if isinstance(values, pa.Array | pa.ChunkedArray):
            arrays[name] = values
        elif isinstance(values, np.ndarray) and values.ndim > 1:  # Ray's tensor columns
            arrays[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))
        else:
            arrays[name] = pa.array(values)
    return arrays
