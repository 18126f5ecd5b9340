"""A model type registered from outside vitkit, in ONE entry (``TOY_TYPE`` below), runs in every
command with no other edit: `vitkit predict`, `embed`, `eval` and `slide` in this process (the
entry passed to ``register``), and `vitkit serve` as a real uvicorn process that finds it as an
installed package's entry point (group ``vitkit.model_types``).

The reference numbers come from outside vitkit's flow: transformers' ``ViTImageProcessorPil``
with the checkpoint's preprocessor_config.json, then the toy network called directly."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from vitkit.checkpoints import MODEL_TYPES, LoadRequest, ModelType, hf_directory
from vitkit.checkpoints.overrides import apply_overrides
from vitkit.cli import main
from vitkit.models.protocol import Capabilities

LABELS = ["dark", "red", "green"]
SIZE = 16


# ---- the toy model type: a config, a network, its reader and saver --------------------------
@dataclasses.dataclass
class ToyConfig:
    model_type: ClassVar[str] = "toy"
    id2label: dict[int, str] = dataclasses.field(default_factory=dict)
    image_size: int = SIZE
    width: int = 8

    def __post_init__(self) -> None:
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.image_size, self.image_size

    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    def replace(self, **changes: Any) -> ToyConfig:
        return dataclasses.replace(self, **changes)

    def to_hf_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {
            **data,
            "model_type": "toy",
            "id2label": {str(k): v for k, v in self.id2label.items()},
        }

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> ToyConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class ToyNet(nn.Module):
    """A convolution, a mean over the image, a linear head."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Conv2d(3, config.width, 3, padding=1)
        self.head = nn.Linear(config.width, config.num_labels)

    capabilities = Capabilities(pools=("mean",), default_pool="mean")

    def forward_embedding(self, pixel_values: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        return torch.relu(self.stem(pixel_values)).mean(dim=(2, 3))

    def forward_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_embedding(pixel_values))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.forward_logits(pixel_values)

    def reset_head(self, id2label: dict[int, str]) -> None:
        self.config = self.config.replace(id2label=id2label)
        self.head = nn.Linear(self.config.width, len(id2label))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_image(self, image_hw: tuple[int, int] | None = None) -> int:
        height, width = image_hw or self.config.image_hw
        return 2 * 27 * self.config.width * height * width


def toy_processor(config: ToyConfig) -> dict[str, Any]:
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": config.image_size, "width": config.image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
    }


def read_toy(directory: Path, request: LoadRequest) -> tuple[ToyNet, dict[str, Any]]:
    data = json.loads((directory / "config.json").read_text())
    config = apply_overrides(ToyConfig.from_hf_dict(data), request.overrides, directory)
    if request.image_size is not None:
        config = config.replace(image_size=int(request.image_size))  # type: ignore[call-overload]
    model = ToyNet(config)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    processor = json.loads((directory / "preprocessor_config.json").read_text())
    return model.to(request.device).eval(), processor


def save_toy(model: ToyNet, directory: Path, processor: dict[str, Any] | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_hf_dict()))
    (directory / "preprocessor_config.json").write_text(
        json.dumps(processor or toy_processor(model.config))
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    return directory


TOY_TYPE = ModelType(
    name="toy",
    description="a toy CNN registered from outside vitkit",
    config_class=ToyConfig,
    model_class=ToyNet,
    build=ToyNet,
    save=save_toy,
    default_processor=toy_processor,
    formats=(hf_directory(lambda data: data.get("model_type") == "toy", read_toy),),
)


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODEL_TYPES, "toy", TOY_TYPE)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = ToyNet(ToyConfig(id2label=dict(enumerate(LABELS))))
    with torch.no_grad():
        model.head.weight.normal_(0, 3.0)
    return save_toy(model, tmp_path_factory.mktemp("toy") / "model", None)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photos (scikit-image's), cut into small crops of different colours."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        picture = Image.fromarray(getattr(data, name)()).convert("RGB")
        for index, box in enumerate(((0, 0, 120, 120), (150, 150, 300, 260))):
            path = root / f"{name}_{index}.png"
            picture.crop(box).save(path)
            paths.append(path)
    return paths


def reference(toy_dir: Path, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, embeddings) by transformers' PIL preprocessing and the bare network."""
    processor = transformers.ViTImageProcessorPil.from_pretrained(toy_dir)
    pixels = processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    model, _ = read_toy(toy_dir, LoadRequest())
    with torch.no_grad():
        batch = pixels["pixel_values"]
        return model(batch).softmax(-1).numpy(), model.forward_embedding(batch).numpy()


# ---- the commands ---------------------------------------------------------------------------
def test_predict_embed_eval_and_slide_run_a_registered_type(
    toy_registered: None,
    toy_dir: Path,
    images: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    probabilities, embeddings = reference(toy_dir, images)
    assert probabilities.max(-1).min() < 0.9  # scores that can differ
    model = ["--model", str(toy_dir), "--device", "cpu"]
    assert main(["predict", *model, "--format", "json", "--top-k", "3", *map(str, images)]) == 0
    answers = json.loads(capsys.readouterr().out)
    for answer, row in zip(answers, probabilities, strict=True):
        scores = {p["label"]: p["score"] for p in answer["predictions"]}
        np.testing.assert_allclose([scores[label] for label in LABELS], row, atol=1e-4)

    out = tmp_path / "embeddings.npy"
    assert main(["embed", *model, "--out", str(out), *map(str, images)]) == 0
    np.testing.assert_allclose(np.load(out), embeddings, atol=1e-4)

    folder = tmp_path / "labelled"
    truth = probabilities.argmax(-1)
    truth[0] = (truth[0] + 1) % len(LABELS)  # one wrong answer: accuracy 5/6
    for path, label in zip(images, truth, strict=True):
        (folder / LABELS[label]).mkdir(parents=True, exist_ok=True)
        (folder / LABELS[label] / path.name).write_bytes(path.read_bytes())
    assert main(["eval", *model, "--data", str(folder), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(5 / 6)

    slide = tmp_path / "slide.png"
    Image.open(images[1]).resize((64, 48)).save(slide)
    tile = tmp_path / "tile.png"
    Image.open(slide).crop((16, 16, 32, 32)).save(tile)
    slide_out = tmp_path / "slide-out"
    command = ["slide", *model, "--tile-size", "16", "--min-tissue", "0", "--no-progress"]
    assert main([*command, "--out", str(slide_out), str(slide)]) == 0
    rows = list(csv.DictReader((slide_out / "slide" / "tiles.csv").open()))
    assert len(rows) == 12  # a 4 x 3 grid of 16-px tiles
    (row,) = [r for r in rows if (int(r["x"]), int(r["y"])) == (16, 16)]
    expected, _ = reference(toy_dir, [tile])
    got = [float(row[f"prob_{label}"]) for label in LABELS]
    np.testing.assert_allclose(got, expected[0], atol=1e-4)


def test_serve_finds_the_type_as_an_installed_entry_point(
    toy_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    """A package declaring the entry in its metadata (entry_points.txt, what pip installs) is
    enough for a separate `vitkit serve` process, real uvicorn, to serve the type."""
    site = tmp_path / "site"
    _dist_info(site, "toy = test_model_type_plugin:TOY_TYPE")
    tests = Path(__file__).resolve().parent
    path = os.pathsep.join([str(site), str(tests), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = _free_port()
    command = [sys.executable, "-m", "vitkit", "serve", "--model", str(toy_dir)]
    command += ["--port", str(port), "--device", "cpu", "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_ready(client, process, log)
            files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images[:2]]
            answers = client.post("/v1/predict", files=files, params={"top_k": 3})
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert answers.status_code == 200, answers.text
    probabilities, _ = reference(toy_dir, images[:2])
    for answer, row in zip(answers.json(), probabilities, strict=True):
        scores = {p["label"]: p["score"] for p in answer}
        np.testing.assert_allclose([scores[label] for label in LABELS], row, atol=1e-4)


def _dist_info(site: Path, entry: str) -> None:
    """What pip installs for a package declaring ``entry`` in the vitkit.model_types group."""
    info = site / "vitkit_toy-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vitkit-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[vitkit.model_types]\n{entry}\n")


def test_a_broken_plugin_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitkit.checkpoints import registry

    _dist_info(tmp_path, "toy = vitkit_toy_missing.model:TOY")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)  # read the entry points again
    assert main(["info", str(tmp_path / "nothing-here")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "vitkit_toy_missing.model:TOY" in error[0] and "vitkit-toy 0.1" in error[0]
    assert "Fix or uninstall that package" in error[0]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(client: httpx.Client, process: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"vitkit serve exited: {log.read_text()}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"vitkit serve not ready: {log.read_text()}")
