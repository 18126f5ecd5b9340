"""Every model `vitkit compare` trains works in every command.

The baseline (ResNet), scratch (ViT) and distilled (DeiT student) rows are trained briefly on real
digits; then each row's saved best/ goes through `vitkit predict`, `eval`, `embed`, `explain`
(the CNN says it cannot) and `vitkit serve` (a real uvicorn process, one real request).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from test_serve_process import Server
from vitkit.cli import main
from vitkit.experiments.compare import CompareConfig, compare

ROWS = ("baseline", "scratch", "distilled")
CLASSES = ["zero", "one"]


@pytest.fixture(scope="module")
def trained_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the digits folder, compare's output folder) after a short run of the three row types."""
    from vitkit.experiments.demo_data import load_digits_arrays, write_image_folder

    images, labels, _ = load_digits_arrays()
    # 40 real images of each digit: cheap to train on. The validation split gets ~3 per class,
    # under the distillation collapse veto's minimum support, so the few-step student always
    # keeps a best/ to run the commands on (this test is about the commands, not accuracy).
    keep = np.concatenate([np.flatnonzero(labels == digit)[:40] for digit in (0, 1)])
    data = tmp_path_factory.mktemp("digits01")
    write_image_folder(data, images[keep], labels[keep], CLASSES, size=16)
    out = tmp_path_factory.mktemp("compare")
    cfg = CompareConfig(
        data=str(data),
        out=str(out),
        rows=list(ROWS),
        vit_overrides={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        epochs=1,
        baseline_epochs=1,
        batch_size=16,
        progress=False,
    )
    results = compare(cfg)
    assert [r.row for r in results] == list(ROWS)
    for row in ROWS:
        assert (out / "rows" / row / "best" / "config.json").is_file(), row
    return data, out


def _best(out: Path, row: str) -> str:
    return str(out / "rows" / row / "best")


@pytest.fixture(scope="module")
def servers(
    trained_rows: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """One `vitkit serve` process per row, started together (their start-ups overlap)."""
    _, out = trained_rows
    logs = tmp_path_factory.mktemp("serve-logs")
    with ExitStack() as stack:
        started = {row: Server(Path(_best(out, row)), logs / f"{row}.log") for row in ROWS}
        for server in started.values():
            stack.callback(server.close)
        for server in started.values():
            server.wait_ready()
        yield started


def test_predict_eval_embed_explain_take_every_row(
    trained_rows: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = trained_rows
    test_images = sorted(str(p) for p in (data / "test").rglob("*.png"))
    two = [test_images[0], test_images[-1]]  # one "zero", one "one"
    model_types = {}
    for row in ROWS:
        model = _best(out, row)
        capsys.readouterr()
        assert main(["predict", "--model", model, "--format", "json", "--top-k", "2", *two]) == 0
        records = json.loads(capsys.readouterr().out)
        for record in records:
            predictions = record["predictions"]
            assert sorted(p["label"] for p in predictions) == sorted(CLASSES)
            assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)

        eval_out = tmp_path / f"eval-{row}"
        assert main(["eval", "--model", model, "--data", str(data), "--out", str(eval_out)]) == 0
        metrics = json.loads((eval_out / "metrics.json").read_text())
        assert metrics["num_samples"] == len(test_images) and metrics["labels"] == sorted(CLASSES)
        rows = (eval_out / "predictions.csv").read_text().splitlines()
        assert len(rows) == len(test_images) + 1

        embeddings = tmp_path / f"{row}.npz"
        assert main(["embed", "--model", model, "-o", str(embeddings), *two]) == 0
        saved = np.load(embeddings)
        assert saved["embeddings"].shape[0] == 2 and np.isfinite(saved["embeddings"]).all()
        assert list(saved["inputs"]) == two

        maps = tmp_path / f"maps-{row}"
        capsys.readouterr()
        code = main(["explain", test_images[0], "--model", model, "--out", str(maps)])
        model_types[row] = json.loads((Path(model) / "config.json").read_text())["model_type"]
        if model_types[row] == "resnet":
            err = capsys.readouterr().err
            assert code == 1 and "resnet models cannot draw attention maps" in err
            assert err.count("\n") == 1 and not maps.exists()
        else:
            assert code == 0
            record = json.loads(capsys.readouterr().out.splitlines()[0])
            assert Path(record["output"]).read_bytes()[:4] == b"\x89PNG"
    assert model_types == {"baseline": "resnet", "scratch": "vit", "distilled": "deit"}


def test_serve_answers_for_every_row(
    trained_rows: tuple[Path, Path], servers: dict[str, Server]
) -> None:
    data, _ = trained_rows
    image = sorted((data / "test" / "one").glob("*.png"))[0]
    for row, server in servers.items():
        response = server.client.post(
            "/predict_image_class", files={"image": (image.name, image.read_bytes(), "image/png")}
        )
        assert response.status_code == 200, (row, response.text)
        answer = response.json()
        assert answer["predicted_class"] in CLASSES
        assert sorted(p["label"] for p in answer["predictions"]) == sorted(CLASSES)
