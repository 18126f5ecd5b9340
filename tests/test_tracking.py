"""Experiment tracking and model cards, read back with the real libraries.

One short training run on real digits (4 classes, 16x16, a 1-block ViT) with
``--report-to tensorboard,mlflow`` into a temporary MLflow store; then:

- ``mlflow.MlflowClient`` reads the run: its params are the run's settings, its metric history
  is metrics.jsonl's records at their steps, its artefacts hold the model, the test outputs and
  the curves;
- tensorboard's ``EventAccumulator`` reads the same values from ``OUT/tensorboard``;
- ``huggingface_hub.ModelCard`` parses ``best/README.md``; its ``model-index`` metrics are
  ``test/metrics.json``'s; transformers loads the directory and gives the logits vitkit gives;
- a resumed run continues the same MLflow run, and ``vitkit compare`` nests one run per row
  under one run of the comparison.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vitkit.experiments.demo_data import load_digits_arrays, write_image_folder
from vitkit.training.trainer import TrainConfig, TrainResult, train

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def digits_folder(root: Path, classes: int = 4, per_class: int = 40) -> Path:
    """train/ and test/ class folders of real digits (the first ``per_class`` of each class)."""
    images, labels, names = load_digits_arrays()
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(classes)])
    write_image_folder(
        root, images[keep], labels[keep], names[:classes], size=16, test_fraction=0.25
    )
    return root


def tiny_config(data: Path, out: Path, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        data=str(data),
        out=str(out),
        from_scratch=True,
        patch_embed="linear",  # transformers' ViT layout: the card test loads it there
        preset="vit-tiny-patch4-16",
        model_overrides=dict(TINY_VIT),
        epochs=2,
        batch_size=16,
        log_every=3,
        device="cpu",
        progress=False,
    )
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary MLflow file store, for the whole module (MLflow 3 wants the opt-in)."""
    uri = (tmp_path_factory.mktemp("mlflow") / "mlruns").as_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        yield uri


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, mlflow_store: str) -> TrainResult:
    root = tmp_path_factory.mktemp("tracked")
    data = digits_folder(root / "data")
    cfg = tiny_config(
        data, root / "run", report_to=["tensorboard", "mlflow"], experiment="tracking-test"
    )
    return train(cfg)


def records(out: Path, kind: str) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def mlflow_run(out: Path) -> Any:
    from mlflow import MlflowClient

    run_id = json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
    return MlflowClient().get_run(run_id)


def test_mlflow_holds_params_metric_history_and_artifacts(tracked: TrainResult) -> None:
    from mlflow import MlflowClient

    client, run = MlflowClient(), mlflow_run(tracked.out)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tracking-test"
    saved = json.loads((tracked.out / "train_config.json").read_text())
    params = run.data.params
    assert params["lr"] == str(saved["lr"]) and params["optimizer"] == "adamw"
    assert params["model_overrides.hidden_size"] == "32"
    assert params["data.classes"] == "4"
    for kind, name in (("epoch", "val_loss"), ("epoch", "val_macro_f1"), ("step", "loss")):
        history = client.get_metric_history(run.info.run_id, f"{kind}/{name}")
        logged = sorted((m.step, m.value) for m in history)
        expected = [(r["step"], r[name]) for r in records(tracked.out, kind)]
        assert [s for s, _ in logged] == [s for s, _ in expected]
        np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-12)
    test_metrics = json.loads((tracked.out / "test" / "metrics.json").read_text())
    assert run.data.metrics["test/macro_f1"] == pytest.approx(test_metrics["macro_f1"])
    assert run.data.metrics["best/epoch"] == tracked.best_epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "metrics.jsonl", "model", "test"} <= artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"config.json", "model.safetensors", "README.md"} <= model_files


def test_tensorboard_events_hold_the_json_log(tracked: TrainResult) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked.out / "tensorboard"))
    events.Reload()
    for kind in ("epoch", "step"):
        logged = records(tracked.out, kind)
        names = [k for k, v in logged[0].items() if k not in ("type", "epoch", "step", "best")]
        for name in names:
            scalars = events.Scalars(f"{kind}/{name}")
            assert [e.step for e in scalars] == [r["step"] for r in logged]
            # TensorBoard stores float32
            np.testing.assert_allclose(
                [e.value for e in scalars], [r[name] for r in logged], rtol=1e-6
            )
    assert "test/confusion_matrix" in events.Tags()["images"]


def test_model_card_parses_and_its_model_index_is_the_test_report(tracked: TrainResult) -> None:
    from huggingface_hub import ModelCard

    best = tracked.out / "best"
    card = ModelCard.load(best / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-classification"
    test_metrics = json.loads((tracked.out / "test" / "metrics.json").read_text())
    results = {result.metric_name: result for result in card.data.eval_results}
    assert set(results) == {"accuracy", "macro_f1", "macro_precision", "macro_recall", "loss"}
    for name, result in results.items():
        assert result.metric_value == test_metrics[name], name
        assert result.dataset_split == "test" and result.task_type == "image-classification"
    assert results["macro_f1"].metric_type == "f1"
    assert results["macro_f1"].metric_args == {"average": "macro"}
    text = card.text
    for heading in (
        "Training data",
        "Training procedure",
        "Evaluation results",
        "Framework versions",
        "Intended uses and limitations",
    ):
        assert f"## {heading}" in text
    for label, row in test_metrics["per_class"].items():  # the per-class table
        assert f"| {label} | {row['precision']:.4f} | {row['recall']:.4f} |" in text
    assert (best / "curves.png").is_file() and "(curves.png)" in text


def test_transformers_loads_the_carded_directory(tracked: TrainResult) -> None:
    from transformers import ViTForImageClassification

    from vitkit.checkpoints import load_model

    best = tracked.out / "best"
    theirs = ViTForImageClassification.from_pretrained(best).eval()
    ours = load_model(best).model.eval()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(pixel_values=pixels).logits, ours.forward_logits(pixels), atol=1e-5, rtol=1e-4
        )


def test_resume_continues_the_same_mlflow_run(tmp_path: Path, mlflow_store: str) -> None:
    from mlflow import MlflowClient

    data = digits_folder(tmp_path / "data", classes=3, per_class=20)
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1, report_to=["mlflow", "tensorboard"]))
    first = mlflow_run(out).info.run_id
    train(tiny_config(data, out, epochs=2, resume=True, report_to=["mlflow", "tensorboard"]))
    run = mlflow_run(out)
    assert run.info.run_id == first and run.info.status == "FINISHED"
    history = MlflowClient().get_metric_history(first, "epoch/val_loss")
    assert sorted(m.step for m in history) == [r["step"] for r in records(out, "epoch")]


def test_compare_nests_one_run_per_row(tmp_path: Path, mlflow_store: str) -> None:
    from mlflow import MlflowClient

    from vitkit.experiments.compare import compare
    from vitkit.experiments.compare_config import CompareConfig

    data = digits_folder(tmp_path / "data", classes=3, per_class=20)
    cfg = CompareConfig(
        data=str(data),
        out=str(tmp_path / "cmp"),
        rows=["scratch"],
        vit_overrides=dict(TINY_VIT),
        epochs=1,
        baseline_epochs=1,
        batch_size=16,
        device="cpu",
        progress=False,
        report_to=["mlflow"],
        experiment="compare-test",
    )
    compare(cfg)
    client = MlflowClient()
    parent = json.loads((tmp_path / "cmp" / "tracking.json").read_text())["mlflow_run_id"]
    experiment = client.get_experiment_by_name("compare-test")
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert [r.info.run_name for r in children] == ["scratch"]
    assert all("test/macro_f1" in r.data.metrics for r in children)
    assert client.get_run(parent).info.status == "FINISHED"
    assert "table.md" in {a.path for a in client.list_artifacts(parent)}


def test_unknown_tracker_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitkit.cli import main

    command = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--from-scratch"]
    assert main([*command, "--report-to", "wandb"]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--report-to wandb" in lines[0] and "mlflow" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before any work


def test_push_without_a_network_says_so_in_one_line(
    tracked: TrainResult, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vitkit.cli import main

    best = str(tracked.out / "best")
    # No network here: huggingface_hub's real request fails to connect (or, with a network but
    # no token, is refused): either way one line, nothing uploaded.
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(["push", best, "vitkit-tests/tiny-digits"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{best} was not uploaded" in lines[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", best, "vitkit-tests/tiny-digits"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert main(["push", str(tracked.out), "vitkit-tests/tiny-digits"]) == 1
    assert "not a model directory" in capsys.readouterr().err
