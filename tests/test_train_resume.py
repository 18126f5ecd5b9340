"""Acceptance: SIGKILL a training run after epoch 1, `--resume`, and the final metrics and weights
equal those of an uninterrupted run with the same seed; no corrupt checkpoint is ever left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vitkit.checkpoints import load_model
from vitkit.experiments.demo_data import build_demo_folder

EPOCHS = 4


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vitkit", "train", "--data", str(data), "--out", str(out),
        "--from-scratch", "--preset", "vit-tiny-patch4-8", "--model-arg", "hidden_size=32",
        "--model-arg", "num_hidden_layers=2", "--model-arg", "num_attention_heads=2",
        "--model-arg", "intermediate_size=64", "--epochs", str(EPOCHS), "--batch-size", "32",
        "--optimizer", "adamw", "--lr", "2e-3", "--augment", "seed", "--label-smoothing", "0.1",
        "--mix", "mixup",  # its draws come from the global RNG, which last.pt must carry
        "--log-every", "5", "--no-progress", "--device", "cpu", "--seed", "7", *extra,
    ]  # fmt: skip


def _finished_epochs(out: Path) -> int:
    """Epochs recorded in last.pt; the file must always be loadable (atomic writes)."""
    path = out / "last.pt"
    if not path.exists():
        return 0
    return int(torch.load(path, weights_only=True)["epoch"])


def _records(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("seconds", None)  # wall time is the one thing allowed to differ
    return records


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    data = build_demo_folder(tmp_path / "data", size=8, minority=8).root
    env = dict(os.environ, OMP_NUM_THREADS="1")
    whole = subprocess.run(
        _command(data, tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "killed"
    process = subprocess.Popen(
        _command(data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while _finished_epochs(out) < 1:
        assert process.poll() is None, (
            process.stderr.read().decode()[-3000:] if process.stderr else ""
        )
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _finished_epochs(out)
    assert 1 <= killed_at < EPOCHS, f"the run was not killed mid-way (epoch {killed_at})"
    assert process.returncode == -signal.SIGKILL
    assert load_model(out / "best").model.config.id2label[8] == "8"  # best/ intact too

    refused = subprocess.run(
        _command(data, out), env=env, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 1 and "--resume" in refused.stderr
    resumed = subprocess.run(
        _command(data, out, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out} after epoch {killed_at}/{EPOCHS}" in resumed.stderr
    assert not list(out.glob(".*tmp*")) and not list(out.glob(".*.old"))

    assert _records(out) == _records(tmp_path / "whole")
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    reference = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[name], reference[name]) for name in reference)
    test_metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert test_metrics == json.loads((tmp_path / "whole" / "test" / "metrics.json").read_text())
    print(
        f"killed after epoch {killed_at}; resumed run's test macro-F1 {test_metrics['macro_f1']:.4f} = uninterrupted"
    )
