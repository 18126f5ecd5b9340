"""Multi-label models over HTTP: the API answers with thresholds and the labels that pass, the
web page marks each threshold and names those labels, and single-label answers stay as they were.

In-process app (FastAPI TestClient) for the API; Debian's chromium (Playwright) against a real
`vitkit serve --tta d4` process for the page, as tests/test_web_page.py does.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from test_serve_app import wait_ready
from test_serve_process import Server
from test_serve_support import LABELS, free_port, photo_bytes
from test_web_page import browser, chromium, drop_files, photos, screenshot  # noqa: F401 - fixtures
from vitkit.checkpoints import save_pretrained
from vitkit.images.processor import ImageProcessor
from vitkit.inference.classifier import Classifier, load
from vitkit.models.config import preset
from vitkit.models.vit import ViT
from vitkit.serve import ServeSettings, create_app

THRESHOLDS = [0.2, 0.35, 0.5, 0.65, 0.8]
MODEL_NAME = "vit-tiny-multilabel-random-weights"


def save_multilabel_model(directory: Path) -> None:
    """A random 2-layer ViT-Ti with a sigmoid head and one saved threshold per label."""
    torch.manual_seed(2)
    config = preset(
        "vit-tiny-patch16-224",
        num_hidden_layers=2,
        image_size=64,
        patch_size=8,
        id2label=dict(enumerate(LABELS)),
        problem_type="multi_label_classification",
        thresholds=THRESHOLDS,
    )
    model = ViT(config).eval()
    with torch.no_grad():  # spread the sigmoid scores over (0, 1)
        model.head.weight.normal_(0, 1.0)
    save_pretrained(model, directory, ImageProcessor.for_config(config).to_dict())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("serve-multilabel") / MODEL_NAME
    save_multilabel_model(directory)
    return directory


@pytest.fixture(scope="module")
def classifier(model_dir: Path) -> Classifier:
    return load(model_dir, device="cpu")


@pytest.fixture(scope="module")
def client(classifier: Classifier) -> Iterator[TestClient]:
    app = create_app(classifier, ServeSettings(max_batch_size=4, warmup=False))
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client


def test_api_answers_with_thresholds_and_the_labels_that_pass(
    client: TestClient, classifier: Classifier
) -> None:
    info = client.get("/v1/model").json()
    assert info["head"]["problem_type"] == "multi_label_classification"
    assert info["head"]["thresholds"] == dict(zip(LABELS, THRESHOLDS, strict=True))
    assert info["tta"] == "none"
    names = ["chelsea", "coffee", "astronaut"]
    files = [("files", (f"{name}.jpg", photo_bytes(name), "image/jpeg")) for name in names]
    answer = client.post("/v1/predict", params={"top_k": 1}, files=files).json()
    images = [Image.open(io.BytesIO(photo_bytes(name))) for name in names]
    for got, want in zip(answer, classifier.predict(images, top_k=1), strict=True):
        # top 1, and every label that passes its threshold after it
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert [p["positive"] for p in got] == [p["positive"] for p in want]
        assert np.allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5)
        assert all(p["positive"] == (p["score"] >= p["threshold"]) for p in got)
    assert any(len(got) > 1 for got in answer)  # a label past the first passed: not cut
    best = client.post("/predict_image_class", files={"image": ("c.jpg", photo_bytes("coffee"))})
    body = best.json()
    assert body["present"] == [p["label"] for p in body["predictions"] if p["positive"]]


class MultiLabelServer(Server):
    """`vitkit serve` of the multi-label model, with --tta d4 and a lowered threshold for one label."""

    def __init__(self, model: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "vitkit", "serve", "--model", str(model)]
        command += ["--model-name", MODEL_NAME, "--tta", "d4", "--threshold", f"{LABELS[4]}=0.05"]
        command += ["--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with open(log, "wb") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        self.client = httpx.Client(base_url=self.url, timeout=30, trust_env=False)


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_page_marks_thresholds_and_names_the_labels_that_pass(
    model_dir: Path,
    browser: Any,  # noqa: F811 - the fixture
    photos: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    artifacts = Path(os.environ.get("VITKIT_TEST_ARTIFACTS") or "test-artifacts") / "web-page"
    artifacts.mkdir(parents=True, exist_ok=True)
    with MultiLabelServer(model_dir, tmp_path / "serve.log") as server:
        info = server.client.get("/v1/model").json()
        assert info["tta"] == "d4" and info["head"]["thresholds"][LABELS[4]] == 0.05
        files = [("files", ("c.jpg", photos["chelsea"].read_bytes(), "image/jpeg"))]
        api = server.client.post("/v1/predict", params={"top_k": 5}, files=files).json()[0]
        page = browser.new_page()
        try:
            page.goto(server.url + "/")
            page.wait_for_selector("#labels-box:not([hidden])")
            assert "multi-label" in page.locator("#model").inner_text()
            drop_files(page, [photos["chelsea"]])
            card = page.locator(".card").first
            card.locator(".row").first.wait_for()
            rows = card.locator(".row").all()
            assert [r.get_attribute("data-label") for r in rows] == [p["label"] for p in api]
            for row, prediction in zip(rows, api, strict=True):
                assert row.get_attribute("data-positive") == str(prediction["positive"]).lower()
                assert float(row.get_attribute("data-threshold")) == prediction["threshold"]
                left = row.locator(".tick").evaluate("tick => tick.style.left")
                assert float(left.removesuffix("%")) == pytest.approx(100 * prediction["threshold"])
            present = [p["label"] for p in api if p["positive"]]
            assert LABELS[4] in present  # its threshold was lowered to 0.05 on the command line
            assert card.locator(".present").inner_text() == f"present: {', '.join(present)}"
            screenshot(page, artifacts, "multilabel")
        finally:
            page.close()
