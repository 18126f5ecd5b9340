"""One `vitkit serve` process with two models behind API keys and a rate limit, driven over real
HTTP: Triton's own client (``tritonclient.http``) for the Open Inference Protocol, httpx for the
rest.

- tritonclient checks readiness, reads metadata and runs ``infer`` with an image as BYTES
  (binary data extension) and with ``pixel_values`` made by transformers' ViTImageProcessor;
  the outputs equal ``/v1/predict`` / ``/v1/embed`` for the same image;
- keys: 401 without or with a wrong key, 200 with a right one, for every route family; the
  captured log never holds a key, and names the key's owner and the request id;
- the rate limit: one key's clients get 429 + Retry-After past it, served close to the limit;
- two models answer by name; /v1/models lists both with their memory;
- phone photos: a 48 MP JPEG answers 200 (decoded at half scale) within the memory bound; HEIC
  and AVIF answer with the PNG's top-1;
- the web page asks for the key (kept for the tab only) and lets the user pick the model.

The full-size rate-limit measurement (5/s, 64 clients, 10 s) is benchmarks/serve_limits.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pillow_heif
import psutil
import pytest
import tritonclient.http as triton
from PIL import Image
from safetensors import safe_open
from skimage import data
from transformers import ViTImageProcessor

from test_serve_process import Server
from test_serve_support import LABELS, photo_bytes, save_tiny_checkpoint
from test_web_page import browser, chromium, wait_done  # noqa: F401  (fixtures)
from vitkit.serve.settings import ServeSettings

KEY = "tester-key-0123456789abcdefghij"
HAMMER_KEY = "hammer-key-0123456789abcdefghij"
WRONG = "wrong-key-0123456789abcdefghijkl"
RATE, BURST = 10, 20  # per second, per key
AUTH = {"Authorization": f"Bearer {KEY}"}


def auth() -> dict[str, str]:
    """A fresh copy: tritonclient writes its own headers into the dict it is given."""
    return dict(AUTH)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("protocols")
    save_tiny_checkpoint(directory / "cats")
    save_tiny_checkpoint(directory / "vectors", head=False)
    return directory


@pytest.fixture(scope="module")
def server(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = checkpoints / "keys.txt"
    keys.write_text(f"# who may call\ntester:{KEY}\nhammer:{HAMMER_KEY}\n")
    log = tmp_path_factory.mktemp("logs") / "protocols.log"
    with Server(
        f"cats={checkpoints / 'cats'}", log,
        "--model", f"vectors={checkpoints / 'vectors'}",
        "--max-image-bytes", str(10 * 1024 * 1024), "--max-pixels", "25000000",
        "--api-keys", str(keys), "--rate-limit", f"{RATE}/s", "--burst", str(BURST),
        "--key-failures", "1000/min", "--log-format", "json", "--log-level", "info", "--no-warmup",
    ) as running:  # fmt: skip
        running.client.headers.update(AUTH)
        yield running


def v1_predict(server: Server, image: bytes, model: str = "cats") -> list[dict[str, object]]:
    response = server.client.post("/v1/predict", params={"model": model}, content=image)
    assert response.status_code == 200, response.text
    answer: list[list[dict[str, object]]] = response.json()
    return answer[0]


# ---- the Open Inference Protocol, through tritonclient ------------------------------------
def test_tritonclient_infers_as_v1_predict_answers(server: Server) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready(headers=auth())
    assert client.is_model_ready("cats", headers=auth()) and client.is_model_ready(
        "vectors", headers=auth()
    )
    metadata = client.get_model_metadata("cats", headers=auth())
    assert metadata["name"] == "cats" and metadata["versions"] == ["1"]
    assert {t["name"] for t in metadata["inputs"]} == {"image", "pixel_values"}
    assert {"labels", "scores", "decoded_scale"} <= {t["name"] for t in metadata["outputs"]}
    assert client.get_server_metadata(headers=auth())["extensions"] == ["binary_tensor_data"]

    photo = photo_bytes("chelsea", size=120)
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([photo], dtype=np.object_), binary_data=True)
    outputs = [
        triton.InferRequestedOutput("labels", binary_data=True),
        triton.InferRequestedOutput("scores", binary_data=False),
    ]
    result = client.infer("cats", [image], outputs=outputs, headers=auth(), parameters={"top_k": 3})
    expected = v1_predict(server, photo)[:3]
    labels = [label.decode() for label in result.as_numpy("labels")[0]]
    assert labels == [p["label"] for p in expected]
    np.testing.assert_allclose(result.as_numpy("scores")[0], [p["score"] for p in expected], 1e-6)

    # a tensor preprocessed by transformers' own processor gives the same answer
    picture = Image.open(io.BytesIO(photo)).convert("RGB")
    pixels = ViTImageProcessor.from_pretrained(server_checkpoint(server, "cats"))(
        picture, return_tensors="np"
    )["pixel_values"].astype(np.float32)
    tensor = triton.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    from_tensor = client.infer("cats", [tensor], headers=auth(), parameters={"top_k": 3})
    assert [s.decode() for s in from_tensor.as_numpy("labels")[0]] == labels
    np.testing.assert_allclose(
        from_tensor.as_numpy("scores")[0], [p["score"] for p in expected], atol=1e-5
    )


def test_tritonclient_embeddings_equal_v1_embed(server: Server) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    photos = [photo_bytes("chelsea", size=100), photo_bytes("astronaut", size=100)]
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
    result = client.infer("vectors", [image], headers=auth())
    files = [("files", (f"{i}.jpg", photo, "image/jpeg")) for i, photo in enumerate(photos)]
    expected = server.client.post("/v1/embed?model=vectors", files=files).json()["embeddings"]
    np.testing.assert_allclose(result.as_numpy("embeddings"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("decoded_scale"), [1.0, 1.0])
    with pytest.raises(triton.InferenceServerException, match="not an image"):
        bad = triton.InferInput("image", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"not an image at all"], dtype=np.object_))
        client.infer("vectors", [bad], headers=auth())


def server_checkpoint(server: Server, name: str) -> str:
    command = server.process.args
    for index, value in enumerate(command):
        if value == "--model" and str(command[index + 1]).startswith(f"{name}="):
            return str(command[index + 1]).split("=", 1)[1]
    raise AssertionError(f"no model {name}")


# ---- keys, request ids, the log --------------------------------------------------------------
KEYED = [
    (
        "GET",
        "/predict_image_class?image_url=http://10.0.0.1/x.jpg",
        400,
    ),  # refused URL, after the key
    ("POST", "/v1/predict", 200),
    ("POST", "/v1/embed?model=vectors", 200),
    ("GET", "/v1/models", 200),
    ("GET", "/metrics", 200),
    ("GET", "/v2", 200),
    ("GET", "/v2/models/cats", 200),
    ("POST", "/v2/models/cats/infer", 200),
]


def keyed_request(
    server: Server, method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    body: bytes | None = None
    if path.startswith("/v2/") and method == "POST":
        photo = photo_bytes(size=64)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 4 + len(photo)},
                    }
                ]
            }
        )
        body = header.encode() + len(photo).to_bytes(4, "little") + photo
        headers = {**headers, "Inference-Header-Content-Length": str(len(header))}
    elif method == "POST":
        body = photo_bytes(size=64)
    with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as client:
        return client.request(method, path, content=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "status"), KEYED)
def test_every_route_family_needs_a_right_key(
    server: Server, method: str, path: str, status: int
) -> None:
    for headers in ({}, {"Authorization": f"Bearer {WRONG}"}, {"X-API-Key": WRONG}):
        refused = keyed_request(server, method, path, headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert WRONG not in refused.text
    for headers in (AUTH, {"X-API-Key": KEY}):
        assert keyed_request(server, method, path, headers).status_code == status


def test_probes_and_the_page_stay_open(server: Server) -> None:
    for path in ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"]:
        assert httpx.get(server.url + path, trust_env=False).status_code == 200, path


def test_request_ids_and_a_log_without_keys(server: Server) -> None:
    given = server.client.get("/v1/models", headers={"X-Request-ID": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    made = server.client.get("/v1/models").headers["x-request-id"]
    assert len(made) == 32 and made != "trace-42.a"
    forged = server.client.get("/v1/models", headers={"X-Request-ID": 'x" evil=1'})
    assert forged.headers["x-request-id"] not in ('x" evil=1', made)
    keyed_request(server, "GET", "/v1/models", {"Authorization": f"Bearer {WRONG}"})
    time.sleep(0.3)  # the access lines are written after each answer
    text = server.log.read_text()
    for secret in (KEY, HAMMER_KEY, WRONG):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "vitkit.access"]
    traced = [line for line in access if line["request_id"] == "trace-42.a"]
    assert traced and traced[0]["key"] == "tester" and traced[0]["status"] == 200
    assert any(line["status"] == 401 and line["key"] is None for line in access)


# ---- two models ------------------------------------------------------------------------------
def test_two_models_answer_by_name(server: Server) -> None:
    listed = server.client.get("/v1/models").json()
    assert listed["default"] == "cats"
    assert [m["name"] for m in listed["models"]] == ["cats", "vectors"]
    for model in listed["models"]:
        memory = model["memory"]
        assert memory["weights_bytes"] > 0 and memory["decode_buffers_bytes"] > 0
    for model, name in zip(listed["models"], ["cats", "vectors"], strict=True):
        with safe_open(Path(server_checkpoint(server, name)) / "model.safetensors", "np") as saved:
            stored = sum(saved.get_tensor(key).nbytes for key in saved.keys())  # noqa: SIM118
        assert model["memory"]["weights_bytes"] == stored
    assert listed["memory_bound_bytes"] == ServeSettings(
        max_image_bytes=10 * 1024 * 1024
    ).memory_bound(2)
    photo = photo_bytes(size=96)
    assert v1_predict(server, photo)[0]["label"] in LABELS
    no_head = server.client.post("/v1/predict?model=vectors", content=photo)
    assert no_head.status_code == 400 and no_head.json()["error"] == "no_classification_head"
    unknown = server.client.post("/v1/predict?model=dogs", content=photo)
    assert unknown.status_code == 404 and "cats, vectors" in unknown.json()["detail"]
    assert server.client.get("/v1/model?model=vectors").json()["labels"] == []


# ---- phone photos ----------------------------------------------------------------------------
def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_heic_and_avif_answer_with_the_pngs_top1(server: Server) -> None:
    pillow_heif.register_heif_opener()
    photo = Image.fromarray(data.chelsea()).resize((150, 100), Image.BILINEAR)
    top = {
        fmt: v1_predict(server, encoded(photo, fmt, **options))[0]["label"]
        for fmt, options in [("PNG", {}), ("HEIF", {"quality": 95}), ("AVIF", {"quality": 95})]
    }
    assert top["HEIF"] == top["PNG"] and top["AVIF"] == top["PNG"], top


def test_a_48_megapixel_jpeg_answers_within_the_memory_bound(server: Server) -> None:
    big = Image.fromarray(data.chelsea()).resize((8064, 6048), Image.BILINEAR)
    jpeg = encoded(big, "JPEG", quality=85)
    del big
    process = psutil.Process(server.process.pid)
    idle = process.memory_info().rss
    peak, stop = [idle], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        answer = v1_predict(server, jpeg)
    finally:
        stop.set()
        sampler.join()
    assert answer[0]["decoded_scale"] == 0.5 and answer[0]["label"] in LABELS
    bound = ServeSettings(max_image_bytes=10 * 1024 * 1024).memory_bound(2)
    assert max(peak) - idle < bound, (max(peak) - idle, bound)


# ---- the rate limit --------------------------------------------------------------------------
def test_rate_limit_answers_429_and_serves_at_the_limit(server: Server) -> None:
    statuses: list[int] = []
    retry_after: list[str] = []
    seconds = 2.0

    async def hammer() -> None:
        headers = {"Authorization": f"Bearer {HAMMER_KEY}"}
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.url, headers=headers, limits=limits,
                                     trust_env=False, timeout=30) as client:  # fmt: skip
            stop_at = time.monotonic() + seconds

            async def one_client() -> None:
                while time.monotonic() < stop_at:
                    response = await client.get("/v2")
                    statuses.append(response.status_code)
                    if response.status_code == 429:
                        retry_after.append(response.headers["retry-after"])

            await asyncio.gather(*(one_client() for _ in range(16)))

    asyncio.run(hammer())
    served = statuses.count(200)
    assert statuses.count(429) > served and set(statuses) == {200, 429}
    assert all(value.isdigit() and int(value) >= 1 for value in retry_after)
    assert served == pytest.approx(BURST + RATE * seconds, rel=0.1)
    assert server.alive() and server.client.get("/v1/models").status_code == 200  # other key


# ---- the web page behind keys, with a model picker ---------------------------------------------
def test_page_asks_for_the_key_and_lets_the_user_pick_a_model(
    server: Server,
    browser: Any,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photo_bytes("chelsea", size=120))
    tab = browser.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        tab.goto(server.url + "/")
        tab.wait_for_selector("#key-form:not([hidden])")  # /v1/models answered 401
        tab.fill("#key", WRONG)
        tab.click("#use-key")
        tab.wait_for_selector("#key-form:not([hidden])")
        assert "not accepted" in tab.inner_text("#key-why")
        tab.fill("#key", KEY)
        tab.click("#use-key")
        tab.wait_for_selector("#model-choice:not([hidden])")
        options = tab.locator("#model-pick option").all_text_contents()
        assert options == ["cats", "vectors"] and tab.input_value("#model-pick") == "cats"
        assert tab.evaluate("sessionStorage.getItem('vitkit-api-key')") == KEY
        assert tab.evaluate("localStorage.length") == 0  # kept for the tab only
        tab.set_input_files("#file", str(photo))
        wait_done(tab, 1)
        shown = tab.locator("#results .card .row").evaluate_all(
            "rows => rows.map(row => row.dataset.label)"
        )
        assert shown == [p["label"] for p in v1_predict(server, photo.read_bytes())]
        tab.select_option("#model-pick", "vectors")  # an embedder: the page says why no labels
        tab.wait_for_selector("#results .card .error")
        error = tab.locator("#results .card .error").get_attribute("data-error")
        assert error == "no_classification_head"
        assert errors == [], errors
    finally:
        tab.close()
