"""The web page at ``GET /``, end to end: Debian's chromium (driven by Playwright) against a real
``vitkit serve`` process on loopback, serving a tiny random ViT this module builds.

Every test compares what the page shows with what the public API answers for the same input,
and saves a screenshot of the state it checked under ``$VITKIT_TEST_ARTIFACTS/web-page``
(default ``test-artifacts/web-page`` in the repository). The README's screenshots show models
vitkit trained and are made by ``scripts/web_page_screenshot.py``, not by these tests.

The browser is found at ``$VITKIT_CHROMIUM``, ``/usr/bin/chromium`` or on the PATH
(``scripts/install_browser.sh`` installs it; ``make test`` runs that). Without it these tests
skip, except under CI, where they fail: CI must not go green without having run them.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import real_photos
from test_serve_process import MAX_IMAGE_BYTES, Server
from test_serve_support import LABELS, free_port, image_server, photo_bytes

# A hung browser must not hold CI for pytest's default 600 s.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "vit-tiny-random-weights"  # what the page's header shows: the weights mean nothing
IMAGE_SIZE, PATCH_SIZE = 64, 8  # an 8x8 attention grid, still a cheap forward pass
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",  # loopback only, whatever the environment says
    # Without these chromium keeps trying to reach Google's services on a closed network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1000, "height": 800}
PHONE = {"width": 375, "height": 740}


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail under CI, which must run these tests."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str | None:
    candidates = [os.environ.get("VITKIT_CHROMIUM", ""), "/usr/bin/chromium"]
    candidates += [shutil.which(name) or "" for name in ("chromium", "chromium-browser")]
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


# ---- the server, the browser, the artifacts -------------------------------------------------
def save_model(directory: Path) -> None:
    """A 2-layer random ViT-Ti (64 px, 8 px patches, the 5 test labels) as an HF directory."""
    import torch

    from vitkit.checkpoints import save_pretrained
    from vitkit.images.processor import ImageProcessor
    from vitkit.models.config import preset
    from vitkit.models.vit import ViT

    torch.manual_seed(0)
    config = preset(
        "vit-tiny-patch16-224",
        num_hidden_layers=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        id2label=dict(enumerate(LABELS)),
    )
    model = ViT(config).eval()
    with torch.no_grad():  # random heads give near-uniform scores; spread them out
        model.head.weight.normal_(0, 1.0)
    save_pretrained(model, directory, ImageProcessor.for_config(config).to_dict())


class PageServer(Server):
    """test_serve_process's Server, started in the model's parent directory, with private URLs
    allowed and --model-name naming the model (clients never see the server's paths)."""

    def __init__(self, workdir: Path, log: Path, model: str = MODEL_NAME) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "vitkit", "serve", "--model", model]
        command += ["--model-name", model]
        command += ["--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        command += ["--max-image-bytes", str(MAX_IMAGE_BYTES), "--allow-private-urls"]
        command += ["--fetch-timeout", "2"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(
                command, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT, env=env
            )
        self.client = httpx.Client(base_url=self.url, timeout=30, trust_env=False)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        unavailable(
            "no chromium found ($VITKIT_CHROMIUM, /usr/bin/chromium, PATH): "
            "run `bash scripts/install_browser.sh` (Debian: apt-get install chromium)"
        )
    assert path is not None
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    workdir = tmp_path_factory.mktemp("web-page")
    save_model(workdir / MODEL_NAME)
    with PageServer(workdir, workdir / "serve.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed: pip install -e '.[dev]'")
    with (
        tempfile.TemporaryDirectory(prefix="vitkit-chromium-") as profile,  # new and empty
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=DESKTOP,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("VITKIT_TEST_ARTIFACTS") or REPO / "test-artifacts")
    directory = root / "web-page"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photos as files a person would pick: JPEGs, and one PNG over the server's cap."""
    folder = tmp_path_factory.mktemp("web-photos")
    paths = {}
    for name, pixels in real_photos().items():
        paths[name] = folder / f"{name}.jpg"
        Image.fromarray(pixels).save(paths[name], quality=90)
    paths["big"] = folder / "astronaut.png"
    Image.fromarray(real_photos()["astronaut"]).save(paths["big"])
    assert paths["big"].stat().st_size > MAX_IMAGE_BYTES
    return paths


@pytest.fixture
def page(browser: Any, server: PageServer) -> Iterator[Any]:
    """A fresh tab on the served page, with the model header filled in; no script errors allowed."""
    tab = browser.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    # Script errors only: the browser also logs every 4xx the error tests provoke on purpose.
    try:
        tab.goto(server.url + "/")
        tab.wait_for_selector("#labels-box:not([hidden])")
        yield tab
        assert errors == [], errors
    finally:
        tab.close()


def screenshot(page: Any, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# ---- reading the page -----------------------------------------------------------------------
def shown_predictions(card: Any) -> list[dict[str, Any]]:
    """The bars of one card: label, the API's score (data-score), the text and the bar width."""
    rows = card.locator(".row")
    return [
        {
            "label": row.get_attribute("data-label"),
            "score": float(row.get_attribute("data-score")),
            "name": row.locator(".label").inner_text(),
            "text": row.locator(".score").inner_text(),
            "width": row.locator(".bar").evaluate("bar => bar.style.width"),
        }
        for row in rows.all()
    ]


def assert_same_predictions(card: Any, expected: list[dict[str, Any]]) -> None:
    shown = shown_predictions(card)
    assert [row["label"] for row in shown] == [p["label"] for p in expected]
    assert [row["name"] for row in shown] == [p["label"] for p in expected]
    for row, prediction in zip(shown, expected, strict=True):
        # Batching with other requests may move the last float bits, nothing more.
        assert row["score"] == pytest.approx(prediction["score"], rel=1e-5, abs=1e-7)
        assert row["text"] == f"{100 * row['score']:.1f}%"
        assert float(row["width"].removesuffix("%")) == float(row["text"].removesuffix("%"))


def picture_loaded(card: Any) -> bool:
    return bool(
        card.locator(".picture img").evaluate("img => img.complete && img.naturalWidth > 0")
    )


def api_predict(server: PageServer, *paths: Path, top_k: int = 5) -> list[list[dict[str, Any]]]:
    files = [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]
    response = server.client.post("/v1/predict", params={"top_k": top_k}, files=files)
    assert response.status_code == 200, response.text
    answer: list[list[dict[str, Any]]] = response.json()
    return answer


def drop_files(page: Any, paths: list[Path]) -> None:
    """Drag-and-drop, as the browser delivers it: a drop event whose DataTransfer holds files."""
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    transfer = page.evaluate_handle(
        """files => {
            const transfer = new DataTransfer();
            for (const { name, data } of files) {
                const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            }
            return transfer;
        }""",
        files,
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def wait_done(page: Any, cards: int) -> None:
    """Until ``cards`` cards are on show and every request the page made has been answered."""
    try:
        page.wait_for_function(
            "n => document.querySelectorAll('#results .card').length === n"
            " && !document.querySelector('#results [aria-busy]')"
            " && !document.querySelector('#status').textContent.includes('…')",
            arg=cards,
        )
    except Exception as error:  # say what the page showed instead
        state = page.evaluate("() => [status.textContent, results.innerHTML]")
        raise AssertionError(f"page still busy: {state}") from error


# ---- the tests ------------------------------------------------------------------------------
def test_upload_a_photo_shows_the_api_top_k(
    page: Any, server: PageServer, photos: dict[str, Path], artifacts: Path
) -> None:
    model = server.client.get("/v1/model").json()
    assert page.inner_text("#model") == f"model: {model['name']}" == f"model: {MODEL_NAME}"
    assert page.inner_text("#labels-summary") == f"{len(LABELS)} labels"
    assert page.locator("#labels li").all_text_contents() == model["labels"] == LABELS

    page.set_input_files("#file", str(photos["chelsea"]))
    wait_done(page, 1)
    card = page.locator("#results .card")
    [expected] = api_predict(server, photos["chelsea"])
    assert len(expected) == 5
    assert_same_predictions(card, expected)
    assert card.locator("h2").inner_text() == "chelsea.jpg"
    assert picture_loaded(card)
    assert "chelsea.jpg" in card.locator(".picture img").get_attribute("alt")
    assert page.locator("#results .error").count() == 0
    screenshot(page, artifacts, "upload")

    page.select_option("#top-k", "3")  # fewer labels: asked again, the same top of the list
    page.wait_for_function("document.querySelectorAll('#results .row').length === 3")
    wait_done(page, 1)
    assert_same_predictions(card, expected[:3])


def test_paste_a_url_served_locally(page: Any, server: PageServer, artifacts: Path) -> None:
    with image_server(photo_bytes("coffee", size=200)) as base:
        url = f"{base}/image.jpg"
        page.fill("#url", url)
        page.press("#url", "Enter")  # the form submits from the keyboard
        wait_done(page, 1)
        card = page.locator("#results .card")
        answer = server.client.get("/predict_image_class", params={"image_url": url})
        assert answer.status_code == 200, answer.text
        assert_same_predictions(card, answer.json()["predictions"])
        assert card.locator("h2").inner_text() == url
        assert picture_loaded(card)  # the browser shows the image it was given the URL of
        screenshot(page, artifacts, "url")
        # /v1/explain takes image bytes, which the page cannot read from another origin: it says so.
        page.check("#explain")
        note = card.locator(".explain-note")
        note.wait_for()
        assert "needs an uploaded file" in note.inner_text()
        assert card.locator(".overlay:not([hidden])").count() == 0


def test_a_text_file_gives_a_readable_error(
    page: Any, photos: dict[str, Path], artifacts: Path
) -> None:
    text = b"shopping list: milk, eggs, flour\n" * 20
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": text}]
    )
    wait_done(page, 1)
    error = page.locator("#results .card .error")
    assert error.get_attribute("role") == "alert"
    assert error.get_attribute("data-error") == "unsupported_image"
    assert error.locator("strong").inner_text() == "This file is not an image vitkit can read"
    assert "notes.txt" in error.locator("p").inner_text()  # the server's detail names the file
    assert "Traceback" not in page.content()
    assert page.locator("#results .row").count() == 0
    assert page.locator("#results .no-preview").inner_text() == (
        "no preview: the browser cannot show this file"
    )
    assert page.locator("#results .card h2").inner_text() == "notes.txt"
    assert "could not be classified" in page.inner_text("#status")
    screenshot(page, artifacts, "error-not-an-image")


@pytest.mark.parametrize(
    ("case", "title", "detail"),
    [
        ("too-large", "The file is too large for this server", "--max-image-bytes"),
        ("url-refused", "The server refused to fetch that URL", "ftp"),
    ],
)
def test_other_api_errors_are_readable(
    page: Any, photos: dict[str, Path], artifacts: Path, case: str, title: str, detail: str
) -> None:
    if case == "too-large":
        page.set_input_files("#file", str(photos["big"]))
    else:  # refused before any connection: the scheme is checked first
        page.fill("#url", "ftp://127.0.0.1/cat.jpg")
        page.click("#classify")
    wait_done(page, 1)
    error = page.locator("#results .error")
    assert error.locator("strong").inner_text() == title
    assert detail in error.locator("p").inner_text()
    screenshot(page, artifacts, f"error-{case}")


def test_several_images_make_a_grid_with_attention_overlays(
    page: Any, server: PageServer, photos: dict[str, Path], artifacts: Path
) -> None:
    chosen = [photos[name] for name in ("chelsea", "coffee", "astronaut")]
    drop_files(page, chosen)
    wait_done(page, 3)
    cards = page.locator("#results .card")
    for card, expected in zip(cards.all(), api_predict(server, *chosen), strict=True):
        assert_same_predictions(card, expected)
        assert picture_loaded(card)
    lefts = {round(card.bounding_box()["x"]) for card in cards.all()}
    assert len(lefts) >= 2, "the cards should sit side by side at desktop width"

    page.check("#explain")
    page.wait_for_function(
        "document.querySelectorAll('#results .overlay:not([hidden]) img[src^=\"data:\"]')"
        ".length === 3"
    )
    side = IMAGE_SIZE // PATCH_SIZE
    for card, path in zip(cards.all(), chosen, strict=True):
        overlay = card.locator(".overlay")
        assert overlay.locator("figcaption").inner_text() == (
            f"attention rollout ({side}×{side} patches)"
        )
        assert path.name in overlay.locator("img").get_attribute("alt")
        response = server.client.post(
            "/v1/explain", files={"image": (path.name, path.read_bytes(), "image/jpeg")}
        )
        assert response.status_code == 200, response.text
        shown = decode_data_url(overlay.locator("img").get_attribute("src"))
        expected = decode_png(response.json()["overlay_png_base64"])
        assert shown.shape == expected.shape
        assert np.abs(shown.astype(int) - expected).max() <= 2  # same overlay as the API's
    screenshot(page, artifacts, "grid-explain")

    page.select_option("#method", "cls")
    page.wait_for_function(
        "[...document.querySelectorAll('#results .overlay figcaption')]"
        ".every(c => c.textContent.startsWith('last-layer [CLS] attention'))"
    )
    page.uncheck("#explain")
    assert page.locator("#results .overlay:not([hidden])").count() == 0


def decode_png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return decode_png(url[len(prefix) :])


def test_phone_width_has_no_horizontal_scroll(
    page: Any, photos: dict[str, Path], artifacts: Path
) -> None:
    page.set_viewport_size(PHONE)
    page.set_input_files("#file", [str(photos["chelsea"]), str(photos["flower"])])
    page.check("#explain")
    wait_done(page, 2)
    page.wait_for_selector("#results .overlay:not([hidden])")
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.body.scrollWidth, innerWidth]"
    )
    assert max(widths[:2]) <= widths[2] == PHONE["width"], widths
    lefts = {round(card.bounding_box()["x"]) for card in page.locator("#results .card").all()}
    assert len(lefts) == 1, "one column of cards at phone width"
    screenshot(page, artifacts, "phone")

    # A long refused URL: its message wraps instead of widening the page.
    page.fill("#url", "ftp://127.0.0.1/" + "very-long-folder-name/" * 12 + "cat.jpg")
    page.click("#classify")
    wait_done(page, 1)
    assert page.locator("#results .error").count() == 1
    widths = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], widths
    screenshot(page, artifacts, "phone-error")


def test_keyboard_reaches_every_control(
    page: Any, server: PageServer, photos: dict[str, Path], artifacts: Path
) -> None:
    # Playwright turns on file-chooser interception without waiting for it; switched on this
    # early, it is in place long before Enter opens the chooser (a missed one hangs the tab).
    page.on("filechooser", lambda chooser: None)
    focused = []
    for _ in range(6):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    # The labels list's summary, then the controls in reading order ("map" is off until explain is on).
    assert focused[:6] == ["labels-summary", "pick", "url", "classify", "top-k", "explain"], focused
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible

    page.keyboard.press("Space")  # tick "show where the model looked"
    assert page.is_checked("#explain")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "method"

    page.focus("#pick")
    with page.expect_file_chooser() as chooser:  # Enter on the button opens the file chooser
        page.keyboard.press("Enter")
    chooser.value.set_files(str(photos["coffee"]))
    wait_done(page, 1)
    page.wait_for_selector("#results .overlay:not([hidden])")
    [expected] = api_predict(server, photos["coffee"])
    assert_same_predictions(page.locator("#results .card"), expected)
    screenshot(page, artifacts, "keyboard")


# ---- a segmentation model -------------------------------------------------------------------
SEG_MODEL_NAME = "dpt-tiny-random-weights"


@pytest.fixture(scope="module")
def seg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    """A small random transformers DPTForSemanticSegmentation (3 classes, BatchNorm statistics
    of real photos so that its mask holds several classes), served by a real process."""
    from test_segmentation_parity import hf_dpt

    workdir = tmp_path_factory.mktemp("web-page-seg")
    hf_dpt(workdir / SEG_MODEL_NAME)
    with PageServer(workdir, workdir / "serve.log", model=SEG_MODEL_NAME) as running:
        yield running


def test_a_segmentation_model_shows_its_overlay_with_a_legend(
    browser: Any, seg_server: PageServer, photos: dict[str, Path], artifacts: Path
) -> None:
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        tab.goto(seg_server.url + "/")
        tab.wait_for_selector("#labels-box:not([hidden])")
        assert tab.inner_text("#model") == (
            f"model: {SEG_MODEL_NAME} · segmentation: every pixel gets a class"
        )
        tab.set_input_files("#file", str(photos["chelsea"]))
        wait_done(tab, 1)
        card = tab.locator("#results .card")
        overlay = card.locator(".overlay:not([hidden])")
        overlay.wait_for()
        upload = {"image": ("chelsea.jpg", photos["chelsea"].read_bytes(), "image/jpeg")}
        answer = seg_server.client.post("/v1/segment", files=upload)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        shown = decode_data_url(overlay.locator("img").get_attribute("src"))
        assert np.array_equal(shown, decode_png(body["overlay_png_base64"]))  # the API's picture
        height, width = body["size"]
        assert overlay.locator("figcaption").inner_text() == (
            f"classes (mask {width}×{height}, legend below)"
        )
        natural = overlay.locator("img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert natural == [shown.shape[1], shown.shape[0]]
        assert overlay.locator("img").bounding_box()["height"] > 100  # on show, not a thumbnail
        # The legend: a strip below the painted image, one row per class present in the mask,
        # its swatch in the mask PNG's palette colour of that class, its name drawn beside it.
        mask_png = Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"])))
        mask, colours = np.asarray(mask_png), mask_png.getpalette()
        present = [int(c) for c in np.unique(mask) if c != 255]
        assert len(present) >= 2 and mask.shape == (height, width)
        assert shown.shape[0] == height + 14 * len(present) + 6
        for row, index in enumerate(present):
            top = height + 3 + row * 14
            assert tuple(shown[top + 6, 9]) == tuple(colours[3 * index : 3 * index + 3])
            assert (shown[top + 2 : top + 12, 20:60] < 100).any()  # dark text: the class name
        shares = shown_predictions(card)
        expected = sorted(
            (row for row in body["classes"] if row["pixels"] > 0), key=lambda row: -row["pixels"]
        )
        assert [row["label"] for row in shares] == [row["label"] for row in expected]
        assert [row["score"] for row in shares] == pytest.approx([r["fraction"] for r in expected])
        screenshot(tab, artifacts, "segmentation-overlay")
        assert errors == [], errors
    finally:
        tab.close()
