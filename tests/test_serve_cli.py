"""`vitkit serve` refuses settings that cannot work before loading anything: one line each, exit 1.

In-process through ``vitkit.cli.main`` (no server starts: every case fails before uvicorn).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitkit.cli import main
from vitkit.inference import runtime


def refusal(capsys: pytest.CaptureFixture[str], *options: str) -> str:
    code = main(["serve", *options])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitkit serve: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["--port", "70000"], "--port 70000"),
        (["--port", "-1"], "--port -1"),
        (["--max-batch-size", "0"], "--max-batch-size 0"),
        (["--max-queue", "0"], "--max-queue 0"),
        (["--max-image-bytes", "0"], "--max-image-bytes 0"),
        (["--request-timeout", "0"], "--request-timeout 0"),
        (["--upload-timeout", "-5"], "--upload-timeout -5"),
        (["--fetch-timeout", "0"], "--fetch-timeout 0"),
        (["--decode-workers", "-1"], "--decode-workers -1"),
        (["--max-pixels", "1000000", "--decode-pixel-budget", "999"], "--decode-pixel-budget 999"),
        (["--min-transfer-rate", "-1"], "cannot be negative"),
        (["--graceful-timeout", "-1"], "--graceful-timeout"),
        (["--model", "./no/such/checkpoint"], "./no/such/checkpoint"),
        (["--model", "/no/such/model.npz"], "/no/such/model.npz"),
        (["--device", "tpu"], "--device tpu"),
        (["--device", "meta", "--precision", "int8"], "int8"),
        (["--max-fetches", "0"], "--max-fetches 0"),
        (["--api-keys", "/no/such/keys.txt"], "--api-keys /no/such/keys.txt: no such file"),
        (["--rate-limit", "fast"], "--rate-limit 'fast'"),
        (["--burst", "5"], "--burst needs --rate-limit"),
        (["--model", "a=/no/a", "--model", "b=/no/b"], "--model a=/no/a"),
        (["--model", "google/vit-a", "--model", "google/vit-b"], "give each its own name"),
        (["--open-metrics"], "--open-metrics needs --api-keys or --rate-limit"),
        (["--key-failures", "5/min"], "--key-failures needs --api-keys"),
        (["--model", "a=google/vit-a", "--model-name", "x"], "--model-name x: it names a single"),
        (["--upload-grace", "-1"], "--upload-grace -1: cannot be negative"),
    ],
)
def test_impossible_settings_are_one_line(
    capsys: pytest.CaptureFixture[str], options: list[str], names: str
) -> None:
    assert names in refusal(capsys, *options)


def test_cuda_where_there_is_none(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert "no CUDA device" in refusal(capsys, "--device", "cuda:0")


def test_half_precision_on_a_cpu_without_half_units(capsys: pytest.CaptureFixture[str]) -> None:
    if runtime.cpu_has_fast_half("fp16"):
        pytest.skip("this CPU multiplies fp16 natively")
    assert "fp16" in refusal(capsys, "--device", "cpu", "--precision", "fp16")


def test_a_short_key_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("alice:short\n")
    assert "line 1: a key of 5 characters is guessable" in refusal(capsys, "--api-keys", str(keys))


def test_a_possible_setting_is_not_refused_by_the_checks(tmp_path: Path) -> None:
    from vitkit.cli import build_parser
    from vitkit.cli.serve import settings as serve_settings
    from vitkit.serve.process import check_startup

    options = ["--model", f"cats={tmp_path}", "--model", f"dogs={tmp_path}", "--device", "cpu"]
    args = build_parser().parse_args(["serve", *options, "--rate-limit", "5/s", "--tta", "flip"])
    settings = serve_settings(args)
    check_startup(settings)  # no exception
    assert settings.max_pixels == 25_000_000 and settings.pixel_budget == 25_000_000
    sources = settings.model_sources()
    assert list(sources) == ["cats", "dogs"]
    assert {load.model for load in sources.values()} == {str(tmp_path)}
    assert all(load.tta == "flip" and load.device == "cpu" for load in sources.values())
    assert settings.decode_workers == 4 and settings.rate_limit == "5/s"
