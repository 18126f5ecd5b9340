"""The pieces of the Ray engine that run without Ray: the map_batches classes on batches of every
shape Ray hands them, URL fetching through the SSRF guard, the id set and the output shards."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vitkit
from vitkit.engines import ids as ids_module
from vitkit.engines.batch import VitkitEmbedder, VitkitPredictor
from vitkit.engines.decode import can_split, decode_images
from vitkit.engines.ids import IdSet
from vitkit.engines.shards import ShardWriter
from vitkit.engines.sources import open_source
from vitkit.errors import EngineError


@pytest.fixture(scope="module")
def photo_bytes(photo_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(photo_dir.glob("*.jpg"))}


def test_predictor_on_a_numpy_batch_of_bytes(
    tiny_hf_classifier: Path, photo_bytes: dict[str, bytes]
) -> None:
    names = [*photo_bytes, "broken.jpg"]
    batch = {
        "sku": np.array(names, dtype=object),
        "image": np.array([*photo_bytes.values(), b"\xff\xd8 not a jpeg"], dtype=object),
    }
    table = VitkitPredictor(str(tiny_hf_classifier), top_k=3)(batch)
    assert table.column_names == ["sku", "label", "score", "predictions", "error"]  # bytes dropped
    rows = table.to_pylist()
    expected = vitkit.load(str(tiny_hf_classifier)).predict(list(photo_bytes.values()), top_k=3)
    for row, want in zip(rows, expected, strict=False):
        assert row["error"] is None
        assert [p["label"] for p in row["predictions"]] == [p["label"] for p in want]
        np.testing.assert_allclose(
            [p["score"] for p in row["predictions"]], [p["score"] for p in want], atol=1e-6
        )
    assert rows[-1]["sku"] == "broken.jpg" and rows[-1]["predictions"] is None
    assert "JPEG" in rows[-1]["error"] or "image" in rows[-1]["error"]


def test_a_decode_stage_changes_no_number(
    tiny_hf_classifier: Path, photo_bytes: dict[str, bytes]
) -> None:
    """Decoding in a stage of its own (CPU tasks before GPU workers) gives the same answers."""
    predictor = VitkitPredictor(str(tiny_hf_classifier))
    assert can_split(predictor.classifier.processor, predictor.classifier.processor_mode)
    batch = {
        "id": np.array([*photo_bytes, "broken"], dtype=object),
        "image": np.array([*photo_bytes.values(), b"GIF89a broken"], dtype=object),
    }
    decoded = decode_images(batch, processor=predictor.classifier.processor, image_column="image")
    assert decoded["pixels"].dtype == np.uint8 and "image" not in decoded
    assert predictor(decoded).to_pylist() == predictor(batch).to_pylist()


def test_embedder_on_a_pandas_batch_of_arrays(tiny_hf_feature_extractor: Path) -> None:
    """What ray.data.read_images gives: HWC uint8 arrays, in a pandas batch."""
    import pandas as pd
    from skimage import data

    pixels = [data.astronaut(), data.coffee()]
    frame = pd.DataFrame({"image": pixels, "n": [1, 2]})
    table = VitkitEmbedder(str(tiny_hf_feature_extractor), pool="mean")(frame)
    assert table.column_names == ["n", "embedding", "error"]
    want = vitkit.load(str(tiny_hf_feature_extractor)).embed(pixels, pool="mean")
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), want, atol=1e-6)


def test_embedder_batch_where_nothing_decodes(tiny_hf_feature_extractor: Path) -> None:
    table = VitkitEmbedder(str(tiny_hf_feature_extractor))({"path": ["/nonexistent.png"]})
    assert table.column("embedding").type.list_size == 64  # the same schema as other batches
    assert table.to_pylist() == [
        {"path": "/nonexistent.png", "embedding": None, "error": "/nonexistent.png: no such file"}
    ]


class _ImageServer(http.server.BaseHTTPRequestHandler):
    images: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.images.get(self.path.lstrip("/"), b"")
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_server(photo_bytes: dict[str, bytes]) -> Iterator[str]:
    """Photos over HTTP on 127.0.0.1: a loopback address, refused unless a job allows it."""
    _ImageServer.images = photo_bytes
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_urls_go_through_the_ssrf_guard(
    tiny_hf_classifier: Path, image_server: str, photo_bytes: dict[str, bytes]
) -> None:
    urls = [f"{image_server}/{name}" for name in photo_bytes] + [f"{image_server}/missing.jpg"]
    refused = VitkitPredictor(str(tiny_hf_classifier))({"url": urls}).to_pylist()
    assert all(
        "refusing to fetch" in row["error"] and "loopback" in row["error"] for row in refused
    )

    allowed = VitkitPredictor(str(tiny_hf_classifier), allow_hosts=["127.0.0.1"])
    rows = allowed({"url": urls}).to_pylist()
    assert rows[-1]["url"] == urls[-1] and "HTTP 404" in rows[-1]["error"]
    by_bytes = allowed({"image": list(photo_bytes.values())}).to_pylist()
    for by_url, direct in zip(rows, by_bytes, strict=False):
        assert by_url["predictions"] == direct["predictions"] and by_url["error"] is None


def test_a_headless_model_cannot_predict(tiny_hf_feature_extractor: Path) -> None:
    with pytest.raises(vitkit.errors.NoClassificationHeadError):
        VitkitPredictor(str(tiny_hf_feature_extractor))


def test_id_set_finds_what_was_added(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids_module, "_MERGE_AT", 3)  # exercise the merge into the sorted array
    seen = IdSet(["a", "b"])
    assert seen.add_new(["b", "c", "c", "d", "e"]).tolist() == [False, True, False, True, True]
    assert seen.contains(["a", "c", "e", "z", ""]).tolist() == [True, True, True, False, False]
    assert len(seen) == 5
    assert seen.add_new(["e", "f"]).tolist() == [False, True]


def test_shards_skip_written_ids_and_refuse_another_job(tmp_path: Path) -> None:
    job = {"task": "embed", "model": "m", "pool": "cls"}
    schema = pa.schema([("id", pa.string()), ("error", pa.string())])

    def rows(ids: list[str], error: str | None = None) -> pa.Table:
        return pa.table({"id": ids, "error": [error] * len(ids)}, schema=schema)

    writer = ShardWriter(tmp_path, job, shard_rows=2)
    (tmp_path / ".part-000009.parquet.tmp-1-ab").write_bytes(b"half a shard")
    kept = writer.add(rows(["a", "b", "a"]))
    assert kept.column("id").to_pylist() == ["a", "b"] and len(writer.shards) == 1
    writer.add(rows(["c"], "bad"))
    writer.flush()

    again = ShardWriter(tmp_path, job)
    assert again.previous_rows == 3 and not list(tmp_path.glob(".part-*"))
    assert again.add(rows(["c", "d"])).num_rows == 1
    assert pq.read_table(tmp_path).column("id").to_pylist() == ["a", "b", "c"]

    with pytest.raises(EngineError, match="'cls' -> 'mean'"):
        ShardWriter(tmp_path, {**job, "pool": "mean"})


def test_sources(tmp_path: Path, photo_dir: Path) -> None:
    listing = tmp_path / "inputs.txt"
    listing.write_text(
        f"# photos\nrel.jpg\n\n{photo_dir / 'coffee.jpg'}\nhttps://example.com/a.jpg\n"
    )
    items = open_source([str(listing), str(photo_dir)])
    assert items.ids[:3] == ["rel.jpg", str(photo_dir / "coffee.jpg"), "https://example.com/a.jpg"]
    assert items.images[0] == str(tmp_path / "rel.jpg") and len(items.ids) == 3 + 6

    pq.write_table(pa.table({"link": ["u"]}), tmp_path / "t.parquet")
    with pytest.raises(EngineError, match="--image-column"):
        open_source([str(tmp_path / "t.parquet")])
    source = open_source([str(tmp_path / "t.parquet")], image_column="link")
    assert source.rows == 1 and source.id_column is None
    with pytest.raises(EngineError, match="not both"):
        open_source([str(tmp_path / "t.parquet"), str(photo_dir)])
