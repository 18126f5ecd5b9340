"""The serving app in-process (fast): endpoints, batching, errors, metrics, and a hypothesis fuzz.

The real-process tests (uvicorn subprocess, real HTTP, hostile URLs, SIGTERM) are in
test_serve_process.py. Nothing here leaves the process: URL fetches in the fuzz are stopped
after the address check, before any connection.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitkit.serve.runner as serve_runner
import vitkit.serve.uploads as serve_uploads
from test_serve_support import LABELS, photo_bytes, png_bomb, save_tiny_checkpoint
from vitkit.errors import FetchError
from vitkit.images.fetch import FetchPolicy, _parse, resolve_checked
from vitkit.inference.classifier import Classifier, load
from vitkit.inference.explain import attention_maps
from vitkit.serve import ServeSettings, create_app
from vitkit.serve.batcher import MicroBatcher
from vitkit.serve.errors import DeadlineExceeded, Overloaded
from vitkit.serve.explain import overlay_png, wants_png
from vitkit.serve.limits import PixelBudget
from vitkit.serve.settings import ServeSettingsError

PHOTOS = ["chelsea", "coffee", "astronaut"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("serve-tiny")
    save_tiny_checkpoint(directory)
    return directory


@pytest.fixture(scope="module")
def classifier(checkpoint: Path) -> Classifier:
    return load(checkpoint, device="cpu")


def wait_ready(client: TestClient, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture(scope="module")
def client(classifier: Classifier) -> Iterator[TestClient]:
    app = create_app(
        classifier,
        ServeSettings(max_batch_size=4, max_image_bytes=300_000, max_pixels=4_000_000),
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


# ---- answers ---------------------------------------------------------------------------------
def test_v1_predict_matches_the_library_per_image(
    client: TestClient, classifier: Classifier
) -> None:
    photos = [photo_bytes(name) for name in PHOTOS]
    files = [
        ("files", (f"{name}.jpg", data, "image/jpeg"))
        for name, data in zip(PHOTOS, photos, strict=True)
    ]
    response = client.post("/v1/predict?top_k=3", files=files)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = classifier.predict([Image.open(io.BytesIO(data)) for data in photos], top_k=3)
    assert len(answer) == 3
    for got, want in zip(answer, expected, strict=True):
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert np.allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5)
    assert len({tuple(p["label"] for p in got) for got in answer}) > 1  # images told apart


def test_seed_style_answer_from_upload_and_raw_body(client: TestClient) -> None:
    data = photo_bytes("coffee")
    upload = client.post(
        "/predict_image_class", files={"image": ("coffee.jpg", data, "image/jpeg")}
    )
    assert upload.status_code == 200
    answer = upload.json()
    assert answer["predicted_class"] == answer["predictions"][0]["label"] in LABELS
    assert answer["score"] == answer["predictions"][0]["score"]
    scores = [p["score"] for p in answer["predictions"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)  # 5 labels, top 5: the whole softmax
    raw = client.post("/v1/predict", content=data, headers={"content-type": "image/jpeg"})
    assert raw.json()[0] == answer["predictions"]


def test_embed_matches_the_library(client: TestClient, classifier: Classifier) -> None:
    data = photo_bytes("astronaut")
    for pool in ("cls", "mean"):
        response = client.post(f"/v1/embed?pool={pool}", files={"f": ("a.jpg", data, "image/jpeg")})
        assert response.status_code == 200
        body = response.json()
        want = classifier.embed(Image.open(io.BytesIO(data)), pool=pool)
        assert body["dim"] == 192 and body["pool"] == pool
        assert np.allclose(body["embeddings"], want, atol=1e-4)
    assert client.post("/v1/embed?pool=pooler", content=data).json()["error"] == "bad_request"


def test_probes_model_info_docs_and_page(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    info = client.get("/v1/model").json()
    assert info["labels"] == LABELS and info["config"]["image_size"] == 32
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text and "/static/app.js" in page.text
    assert 'id="explain"' in page.text  # the attention-overlay toggle
    script = client.get("/static/app.js").text
    assert "predict_image_class" in script and "/v1/explain" in script


def test_metrics_count_routes_statuses_and_batches(client: TestClient) -> None:
    client.post("/v1/predict", content=b"not an image")
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert 'vitkit_http_requests_total{method="POST",route="/v1/predict",status="415"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "vitkit_batch_size_count" in text
    assert "vitkit_queue_depth" in text
    assert 'vitkit_http_request_duration_seconds_bucket{le="0.005",route="/v1/predict"}' in text


# ---- /v1/explain ------------------------------------------------------------------------------
def decoded_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_explain_json_map_predictions_and_overlay(
    client: TestClient, classifier: Classifier
) -> None:
    data = photo_bytes("astronaut", size=96)  # 96 x 96: square; chelsea below is 96 x 64
    wide = photo_bytes("chelsea", size=96)
    photo = Image.open(io.BytesIO(wide))
    pixels = classifier.prepare([photo])
    library = attention_maps(classifier.model, pixels)
    patch = classifier.config.patch_size
    grid = [pixels.shape[-2] // patch, pixels.shape[-1] // patch]
    maps = {}
    for method, want in (("rollout", library.rollout[0]), ("cls", library.last_layer[0])):
        response = client.post(
            f"/v1/explain?method={method}&top_k=2",
            files={"image": ("chelsea.jpg", wide, "image/jpeg")},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["method"] == method and body["grid"] == grid
        attention = np.asarray(body["attention_map"])
        assert list(attention.shape) == grid  # the patch grid, rows x cols
        assert attention.sum() == pytest.approx(1.0, abs=1e-4) and (attention >= 0).all()
        assert np.allclose(attention, want.numpy(), atol=1e-5)
        expected = classifier.predict(photo, top_k=2)[0]
        assert [p["label"] for p in body["predictions"]] == [p["label"] for p in expected]
        scores = [p["score"] for p in body["predictions"]]  # explicit vs fused attention:
        assert np.allclose(scores, [p["score"] for p in expected], atol=1e-5)  # float rounding
        overlay = decoded_png(base64.b64decode(body["overlay_png_base64"]))
        assert overlay.width / overlay.height == pytest.approx(photo.width / photo.height, 0.02)
        maps[method] = attention
    assert not np.allclose(maps["rollout"], maps["cls"])  # two different maps
    square = client.post("/v1/explain", content=data, headers={"content-type": "image/jpeg"})
    overlay = decoded_png(base64.b64decode(square.json()["overlay_png_base64"]))
    assert overlay.width == overlay.height


def test_overlay_heat_lands_where_the_map_points() -> None:
    """A map hot in its top-right patch heats the top-right of a wide picture, nowhere else."""
    attention = np.zeros((2, 3), np.float32)
    attention[0, 2] = 1.0  # row 0, column 2: top right
    picture = Image.new("RGB", (300, 200), (90, 90, 90))
    overlay = np.asarray(decoded_png(overlay_png(picture, attention)), np.float32)
    assert overlay.shape == (200, 300, 3)
    brightness = overlay.mean(axis=2)
    top_right, bottom_left = brightness[:60, 240:].mean(), brightness[140:, :60].mean()
    assert top_right > bottom_left + 60
    assert wants_png("image/png") and not wants_png("application/json, image/png")
    assert not wants_png("*/*") and wants_png("image/png;q=0.9, application/json;q=0.5")


def test_explain_png_by_accept_header_or_format(client: TestClient) -> None:
    data = photo_bytes("chelsea", size=96)
    by_header = client.post(
        "/v1/explain", content=data, headers={"content-type": "image/jpeg", "accept": "image/png"}
    )
    by_query = client.post("/v1/explain?format=png&method=cls", files={"image": ("c.jpg", data)})
    for response in (by_header, by_query):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        overlay = decoded_png(response.content)
        assert overlay.mode == "RGB" and overlay.width / overlay.height == pytest.approx(1.5, 0.02)
    json_first = client.post(
        "/v1/explain", content=data, headers={"accept": "application/json, image/png"}
    )
    assert json_first.headers["content-type"] == "application/json"


def test_explain_bad_input_is_4xx(client: TestClient) -> None:
    cases = [
        (b"", 400, "bad_request"),
        (b"hello, I am text\n" * 10, 415, "unsupported_image"),
        (png_bomb(), 413, "image_too_large"),
        (truncated_jpeg(), 400, "bad_image"),
        (b"\x00" * 400_000, 413, "request_too_large"),
    ]
    for body, status, code in cases:
        response = client.post("/v1/explain?format=png", content=body)
        assert (response.status_code, response.json()["error"]) == (status, code), response.text
    two = client.post(
        "/v1/explain", files=[("a", ("a.jpg", photo_bytes())), ("b", ("b.jpg", photo_bytes()))]
    )
    assert (two.status_code, two.json()["error"]) == (400, "bad_request")
    assert client.post("/v1/explain?method=gradcam", content=photo_bytes()).status_code == 422
    text = client.get("/metrics").text
    assert 'vitkit_http_requests_total{method="POST",route="/v1/explain",status="413"}' in text
    assert 'vitkit_http_requests_total{method="POST",route="/v1/explain",status="422"}' in text
    assert client.get("/healthz").status_code == 200


def test_explain_and_predict_never_share_the_model_at_once(checkpoint: Path) -> None:
    """Concurrent explain and predict requests: the model is entered by one thread at a time."""
    tracked = load(checkpoint, device="cpu")
    inside, most = [0], [0]
    lock = threading.Lock()
    forward = tracked.model.forward

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.02)  # widen the window a race would need
            return forward(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    tracked.model.forward = counting_forward  # type: ignore[method-assign]
    app = create_app(tracked, ServeSettings(max_batch_size=4, warmup=False))
    data = photo_bytes("coffee")
    statuses: list[int] = []
    with TestClient(app) as test_client:
        wait_ready(test_client)

        def call(route: str) -> None:
            statuses.append(test_client.post(route, content=data).status_code)

        routes = ["/v1/explain", "/v1/predict"] * 4
        threads = [threading.Thread(target=call, args=(route,)) for route in routes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = test_client.get("/metrics").text
    assert statuses == [200] * len(routes)
    assert most[0] == 1
    assert 'route="/v1/explain",status="200"} 4.0' in metrics


def slow_model_classifier(checkpoint: Path, seconds: float) -> Classifier:
    """A classifier whose every forward pass (predict or explain) takes ``seconds`` longer."""
    slow = load(checkpoint, device="cpu")
    forward = slow.model.forward
    slow.model.forward = lambda *a, **k: (time.sleep(seconds), forward(*a, **k))[1]  # type: ignore[method-assign]
    return slow


def test_explain_shares_the_deadline_and_the_queue_bound(checkpoint: Path) -> None:
    data = photo_bytes()
    late = ServeSettings(request_timeout=0.3, warmup=False)
    with TestClient(create_app(slow_model_classifier(checkpoint, 1.0), late)) as test_client:
        wait_ready(test_client)
        start = time.monotonic()
        response = test_client.post("/v1/explain", content=data)
        assert (response.status_code, response.json()["error"]) == (504, "deadline_exceeded")
        assert time.monotonic() - start < 0.9
    full = ServeSettings(max_batch_size=1, max_queue=1, warmup=False)
    with TestClient(create_app(slow_model_classifier(checkpoint, 0.4), full)) as test_client:
        wait_ready(test_client)
        answers: list[Any] = []

        def call(route: str) -> None:
            response = test_client.post(route, content=data)
            answers.append((response.status_code, response.headers.get("retry-after")))

        routes = ["/v1/explain", "/v1/explain", "/v1/predict", "/v1/explain"]
        threads = [threading.Thread(target=call, args=(route,)) for route in routes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert (200, None) in answers and (503, "1") in answers


# ---- bad input -> the right status, as JSON -------------------------------------------------
def truncated_jpeg() -> bytes:
    data = photo_bytes("chelsea", size=96)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "bad_request"),
        (b"hello, I am text\n" * 10, 415, "unsupported_image"),
        (png_bomb(), 413, "image_too_large"),
        (truncated_jpeg(), 400, "bad_image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "unsupported_image"),
        (b"\x00" * 400_000, 413, "request_too_large"),
    ],
)
def test_bad_bodies(client: TestClient, body: bytes, status: int, code: str) -> None:
    response = client.post("/v1/predict", content=body, headers={"content-type": "image/png"})
    assert (response.status_code, response.json()["error"]) == (status, code), response.text
    assert response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_missing_fields_are_422(client: TestClient) -> None:
    assert client.get("/predict_image_class").status_code == 422
    wrong_field = client.post(
        "/predict_image_class", files={"photo": ("a.jpg", b"x", "image/jpeg")}
    )
    assert (wrong_field.status_code, wrong_field.json()["error"]) == (422, "missing_field")
    assert client.get("/v1/predict?top_k=0").status_code == 405  # GET is not a route here
    assert client.post("/v1/predict?top_k=0", content=photo_bytes()).status_code == 422


def test_error_names_the_uploaded_file(client: TestClient) -> None:
    response = client.post(
        "/v1/predict", files={"f": ("holiday.jpg", b"GIF89a broken", "image/gif")}
    )
    assert response.status_code in (400, 415)
    assert "holiday.jpg" in response.json()["detail"]


# ---- the batcher ---------------------------------------------------------------------------
def run_jobs(batcher: MicroBatcher, sizes: list[int], deadline_s: float = 5) -> list[Any]:
    async def main() -> list[Any]:
        deadline = time.monotonic() + deadline_s
        jobs = [
            batcher.submit(("predict",), torch.full((n, 1), float(i)), deadline=deadline)
            for i, n in enumerate(sizes)
        ]
        return await asyncio.gather(*jobs, return_exceptions=True)

    return asyncio.run(main())


def test_batcher_gathers_concurrent_jobs_and_splits_results() -> None:
    seen: list[int] = []

    def run(operation: Any, pixels: torch.Tensor, top_k: int) -> list[Any]:
        seen.append(pixels.shape[0])
        time.sleep(0.05)
        return [[{"label": str(v.item()), "score": 1.0}] for v in pixels[:, 0]]

    batcher = MicroBatcher(run, max_batch_size=4, max_delay_s=0.05, max_queue=64)
    batcher.start()
    results = run_jobs(batcher, [1, 1, 2, 1, 3, 1])
    batcher.stop()
    # every job gets exactly its own rows back, in order
    assert [[p[0]["label"] for p in r] for r in results] == [
        ["0.0"],
        ["1.0"],
        ["2.0", "2.0"],
        ["3.0"],
        ["4.0", "4.0", "4.0"],
        ["5.0"],
    ]
    assert sum(seen) == 9 and max(seen) <= 4 and len(seen) < 6  # batched, never over the cap


def test_batcher_waits_for_the_delay_only_while_jobs_are_on_their_way() -> None:
    """A lone request runs at once (it used to sit out max_delay_s: pure latency at one client);
    while the service says requests are still decoding, the batcher waits to batch them."""
    coming = [0]
    started: list[float] = []

    def run(operation: Any, pixels: torch.Tensor, top_k: int) -> list[Any]:
        started.append(time.monotonic())
        return [[{"label": "x", "score": 1.0}]] * pixels.shape[0]

    batcher = MicroBatcher(run, max_delay_s=1.0, expecting=lambda: coming[0])
    batcher.start()
    began = time.monotonic()
    run_jobs(batcher, [1])
    assert started[-1] - began < 0.5  # not the 1 s delay
    coming[0] = 1  # one more request is decoding: worth waiting for
    began = time.monotonic()
    run_jobs(batcher, [1])
    assert started[-1] - began >= 0.9
    batcher.stop()


def test_batcher_bounded_queue_deadline_and_failures() -> None:
    release = threading.Event()

    def run(operation: Any, pixels: torch.Tensor, top_k: int) -> list[Any]:
        release.wait(2)
        if float(pixels[0, 0]) == 1.0:
            raise ValueError("boom")
        return [[{"label": "x", "score": 1.0}]] * pixels.shape[0]

    batcher = MicroBatcher(run, max_batch_size=1, max_delay_s=0, max_queue=2)
    batcher.start()
    results = run_jobs(batcher, [1, 1, 1, 1, 1], deadline_s=0.5)
    assert any(isinstance(r, Overloaded) for r in results)  # queue of 2 + one running
    assert any(isinstance(r, DeadlineExceeded) for r in results)
    release.set()
    drained = time.monotonic() + 5  # the expired jobs leave the queue once the worker is free
    while batcher.qsize() and time.monotonic() < drained:
        time.sleep(0.01)
    after = run_jobs(batcher, [1, 1])  # the worker survived; job 1's error goes to job 1 only
    assert isinstance(after[1], ValueError) and after[0][0][0]["label"] == "x"
    batcher.stop()


def slow_classifier(classifier: Classifier, seconds: float) -> Classifier:
    slow = Classifier(classifier.model, classifier.processor, name="slow")
    original = slow.predict_tensor
    slow.predict_tensor = lambda pixels, top_k: (time.sleep(seconds), original(pixels, top_k))[1]  # type: ignore[method-assign]
    return slow


def test_request_deadline_gives_504(classifier: Classifier) -> None:
    settings = ServeSettings(request_timeout=0.3, warmup=False)
    with TestClient(create_app(slow_classifier(classifier, 1.0), settings)) as test_client:
        wait_ready(test_client)
        start = time.monotonic()
        response = test_client.post("/v1/predict", content=photo_bytes())
        assert (response.status_code, response.json()["error"]) == (504, "deadline_exceeded")
        assert time.monotonic() - start < 0.9
        assert test_client.get("/healthz").status_code == 200


def test_overloaded_app_answers_503_with_retry_after(classifier: Classifier) -> None:
    slow = slow_classifier(classifier, 0.4)
    app = create_app(slow, ServeSettings(max_batch_size=1, max_queue=1, warmup=False))
    data = photo_bytes()
    with TestClient(app) as test_client:
        wait_ready(test_client)
        statuses: list[Any] = []

        def call() -> None:
            response = test_client.post("/v1/predict", content=data)
            statuses.append((response.status_code, response.headers.get("retry-after")))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert (200, None) in statuses and (503, "1") in statuses


# ---- fuzz: never a 500 ---------------------------------------------------------------------
async def no_traffic_fetch(url: str, sink: Any, **options: Any) -> int:
    """The real URL parsing and address checks; a URL that passes is stopped before connecting."""
    parsed = _parse(url)
    checking = FetchPolicy(resolver=lambda host, port: ["10.1.2.3"])  # names: private
    resolve_checked(parsed.host, parsed.port or 80, checking)
    raise FetchError(f"{url}: (test) public address, not contacted")


def image_variants() -> st.SearchStrategy[bytes]:
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    seeds = [photo_bytes("chelsea", size=48), png.getvalue(), png_bomb(70000, 70000)]

    def mutate(args: tuple[int, int, int, int]) -> bytes:
        which, cut, position, value = args
        data = bytearray(seeds[which % len(seeds)])
        data[position % len(data)] = value
        keep = len(data) if cut % 2 else max(1, cut % (len(data) + 1))  # half: whole file
        return bytes(data[:keep])

    return st.tuples(
        st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 255)
    ).map(mutate)


BODIES = st.one_of(st.binary(max_size=2048), image_variants())
CONTENT_TYPES = st.sampled_from(
    [
        "image/jpeg",
        "application/octet-stream",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        "image/png; charset=\x7f",
    ]
)
ROUTES = st.sampled_from(["/v1/predict", "/predict_image_class", "/v1/embed", "/v1/explain"])
QUERY_TEXT = st.text(st.characters(codec="utf-8"), max_size=60)
# Mostly valid parameters, so most cases reach the body; sometimes garbage.
QUERY_PARAMS = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"top_k": st.integers(1, 6).map(str)}),
    st.fixed_dictionaries({"pool": st.sampled_from(["cls", "mean"])}),
    st.fixed_dictionaries({"method": st.sampled_from(["rollout", "cls"])}),
    st.dictionaries(
        st.sampled_from(["top_k", "pool", "method", "format", "x"]), QUERY_TEXT, max_size=2
    ),
)


def assert_json_error_or_ok(response: Any) -> None:
    event(f"status {response.status_code}")  # pytest --hypothesis-show-statistics shows the mix
    assert response.status_code < 500 or response.status_code in (502, 503, 504), response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}


@settings(max_examples=700, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=ROUTES, body=BODIES, content_type=CONTENT_TYPES, query=QUERY_PARAMS)
def test_fuzz_post_bodies(
    client: TestClient, route: str, body: bytes, content_type: str, query: dict[str, str]
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(route, content=body, headers=headers, params=query)
    assert_json_error_or_ok(response)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    url=st.one_of(
        QUERY_TEXT,
        st.builds(
            lambda scheme, rest: scheme + rest,
            st.sampled_from(["http://", "https://", "ftp://", "file://", "http://[", "//"]),
            QUERY_TEXT,
        ),
    ),
    extra=st.dictionaries(QUERY_TEXT, QUERY_TEXT, max_size=3),
)
def test_fuzz_query_strings(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, url: str, extra: dict[str, str]
) -> None:
    monkeypatch.setattr(serve_uploads, "fetch_into", no_traffic_fetch)
    response = client.get("/predict_image_class", params={**extra, "image_url": url})
    assert_json_error_or_ok(response)


# ---- readiness --------------------------------------------------------------------------------
def test_not_ready_while_loading_then_ready(classifier: Classifier) -> None:
    release = threading.Event()

    def slow_load() -> Classifier:
        release.wait(10)
        return classifier

    with TestClient(create_app(slow_load, ServeSettings(warmup=False))) as test_client:
        assert test_client.get("/healthz").status_code == 200  # alive while the model loads
        not_ready = test_client.get("/readyz")
        assert (not_ready.status_code, not_ready.json()["error"]) == (503, "not_ready")
        early = test_client.post("/v1/predict", content=photo_bytes())
        assert (early.status_code, early.headers["retry-after"]) == (503, "5")
        release.set()
        wait_ready(test_client)
        assert test_client.post("/v1/predict", content=photo_bytes()).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path: Path) -> None:
    failures: list[BaseException] = []

    def broken() -> Classifier:
        return load(tmp_path / "no-such-checkpoint")

    app = create_app(broken, on_load_error=failures.append)
    with TestClient(app) as test_client:
        end = time.monotonic() + 10
        while not failures and time.monotonic() < end:
            time.sleep(0.05)
        response = test_client.get("/readyz")
        assert response.status_code == 503 and "failed to load" in response.json()["detail"]
        assert str(tmp_path) not in response.text  # the server's paths stay in its log
    assert failures and "no-such-checkpoint" in str(failures[0])


def test_the_services_pixel_cap_applies_to_uploads_it_classifies(classifier: Classifier) -> None:
    """--max-pixels is the service's, not the checkpoint processor's: a real 300x200 photo
    (60,000 pixels) as PNG is refused under a 50,000-pixel cap, as JPEG it is decoded at half
    scale (and says so), and a 96x64 one answers in full."""
    app = create_app(classifier, ServeSettings(max_batch_size=2, max_pixels=50_000))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        big = test_client.post("/v1/predict", content=photo_bytes(size=300, fmt="PNG"))
        reduced = test_client.post("/v1/predict", content=photo_bytes(size=300))
        small = test_client.post("/v1/predict", content=photo_bytes(size=96))
    assert (big.status_code, big.json()["error"]) == (413, "image_too_large"), big.text
    assert reduced.status_code == 200, reduced.text
    assert {p["decoded_scale"] for p in reduced.json()[0]} == {0.5}
    assert small.status_code == 200, small.text
    assert all("decoded_scale" not in p for p in small.json()[0])
    assert classifier.processor.max_pixels != 50_000  # the served classifier was left as it was


# ---- the HTTP surface: HEAD, Allow, local docs, the public model name -------------------------
def test_head_allow_and_docs_from_local_assets(client: TestClient) -> None:
    for path in ["/healthz", "/readyz", "/v1/model", "/metrics", "/", "/docs"]:
        assert client.head(path).status_code == 200, path
    refused = client.put("/predict_image_class")
    assert refused.status_code == 405 and refused.json()["error"] == "method_not_allowed"
    assert set(refused.headers["allow"].split(", ")) == {"GET", "POST"}
    assert set(client.delete("/healthz").headers["allow"].split(", ")) == {"GET", "HEAD"}
    page = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "/openapi.json" in page
    assert "cdn" not in page.lower() and "https://" not in page  # nothing from the internet
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css"]:
        response = client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_openapi_documents_every_status_with_the_real_error_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error", "detail"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    upload_route = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert set(upload_route) == {"200", "400", "404", "408", "413", "415", "422", "503", "504"}
    url_route = spec["paths"]["/predict_image_class"]["get"]["responses"]
    assert {"502", "504"} <= set(url_route)
    for status, response in upload_route.items():
        if status != "200":
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert "Retry-After" in upload_route["503"]["headers"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert "head" in spec["paths"]["/healthz"] and "head" in spec["paths"]["/v1/model"]
    real = client.post("/v1/predict?top_k=0", content=photo_bytes())  # FastAPI's validation
    assert set(real.json()) == {"error", "detail"}


def test_clients_see_a_model_name_never_a_path(classifier: Classifier, checkpoint: Path) -> None:
    served = load(checkpoint, device="cpu")
    assert str(checkpoint) in served.name  # what load() was given: a path on this server
    for serve_settings, expected in [
        (ServeSettings(warmup=False), "vit, 5 labels"),
        (ServeSettings(warmup=False, model_name="cats-v2"), "cats-v2"),
    ]:
        with TestClient(create_app(served, serve_settings)) as test_client:
            wait_ready(test_client)
            texts = [
                test_client.get("/v1/model").text,
                test_client.get("/readyz").text,
                test_client.post("/v1/embed", content=photo_bytes()).text,
            ]
            assert test_client.get("/v1/model").json()["name"] == expected
        assert all(str(checkpoint) not in text and expected in text for text in texts)
    hub = Classifier(classifier.model, classifier.processor, name="google/vit-base-patch16-224")
    assert serve_runner.public_model_name(hub) == "google/vit-base-patch16-224"


def test_metric_labels_stay_bounded(client: TestClient) -> None:
    for i in range(30):
        client.request(f"INVENTED{i}", "/v1/predict")
    text = client.get("/metrics").text
    assert "INVENTED" not in text and 'method="other"' in text


# ---- settings, budgets, multipart edges ----------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (ServeSettings(max_batch_size=0), "--max-batch-size 0"),
        (ServeSettings(max_queue=0), "--max-queue 0"),
        (ServeSettings(request_timeout=0), "--request-timeout 0"),
        (ServeSettings(max_pixels=1000, decode_pixel_budget=10), "--decode-pixel-budget 10"),
        (ServeSettings(min_transfer_rate=-1), "--min-transfer-rate -1: cannot be negative"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_start(
    classifier: Classifier, settings: ServeSettings, message: str
) -> None:
    with pytest.raises(ServeSettingsError, match=message):
        create_app(classifier, settings)


def test_pixel_budget_takes_turns_and_gives_up_at_the_deadline() -> None:
    budget = PixelBudget(100)
    order: list[str] = []
    with budget.hold(80, time.monotonic() + 1):
        big = threading.Thread(target=lambda: hold(budget, 100, "big", order))
        big.start()
        time.sleep(0.05)  # "big" waits first...
        small = threading.Thread(target=lambda: hold(budget, 10, "small", order))
        small.start()  # ...so "small" waits behind it although 20 pixels are free
        time.sleep(0.05)
        assert order == []
    big.join(2)
    small.join(2)
    assert order == ["big", "small"]
    with (
        budget.hold(100, time.monotonic() + 1),
        pytest.raises(DeadlineExceeded),
        budget.hold(1, time.monotonic() + 0.1),
    ):
        pass
    assert budget.free == 100


def hold(budget: PixelBudget, pixels: int, name: str, order: list[str]) -> None:
    with budget.hold(pixels, time.monotonic() + 2):
        order.append(name)
        time.sleep(0.02)


def test_multipart_edges_and_uploads_spooled_to_disk(classifier: Classifier) -> None:
    """A spool budget of one upload: of three files, two go straight to temporary files, and
    the answers are the same as from memory."""
    settings = ServeSettings(max_files=3, spool_memory=100_000, spool_per_upload=100_000)
    photos = [photo_bytes(name) for name in PHOTOS]
    files = [("files", (f"{n}.jpg", d, "image/jpeg")) for n, d in zip(PHOTOS, photos, strict=True)]
    with TestClient(create_app(classifier, settings)) as test_client:
        wait_ready(test_client)
        spooled = test_client.post("/v1/predict", files=files).json()
        one_by_one = [test_client.post("/v1/predict", content=d).json()[0] for d in photos]
        too_many = test_client.post("/v1/predict", files=[*files, files[0]])
        no_boundary = test_client.post(
            "/v1/predict", content=b"x", headers={"content-type": "multipart/form-data"}
        )
        service = test_client.app.state.service  # type: ignore[attr-defined]
        assert service.spools.used == 0  # every spool released with its request
    assert [[p["label"] for p in a] for a in spooled] == [
        [p["label"] for p in a] for a in one_by_one
    ]
    assert (too_many.status_code, too_many.json()["error"]) == (400, "bad_request")
    assert "more than 3 files" in too_many.json()["detail"]
    assert (no_boundary.status_code, no_boundary.json()["error"]) == (400, "bad_request")


def test_the_settings_alone_name_the_models_to_load(checkpoint: Path) -> None:
    """``create_app(settings=...)``: the library loads what ``ServeSettings.models`` names, each
    with the shared ``LoadSettings``, and answers as the library itself does."""
    from vitkit.inference.settings import LoadSettings

    settings = ServeSettings(
        models=[f"cats={checkpoint}", f"twin={checkpoint}"],
        load=LoadSettings(device="cpu", threads=1),
        warmup=False,
    )
    with TestClient(create_app(settings=settings)) as test_client:
        wait_ready(test_client)
        listed = test_client.get("/v1/models").json()
        answer = test_client.post("/v1/predict?model=twin&top_k=2", content=photo_bytes())
    assert [model["name"] for model in listed["models"]] == ["cats", "twin"]
    [expected] = load(checkpoint, device="cpu").predict([photo_bytes()], top_k=2)
    assert [p["label"] for p in answer.json()[0]] == [p["label"] for p in expected]
