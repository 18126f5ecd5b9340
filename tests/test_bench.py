"""The benchmark engine and `vitkit bench`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from vitkit.bench.contenders import logits_path_flops
from vitkit.bench.memory import Forward, peak_memory
from vitkit.bench.report import write_markdown_block
from vitkit.bench.timing import Contender, run_interleaved, sustained_gemm_rate
from vitkit.cli import main
from vitkit.inference import runtime
from vitkit.models.config import ViTConfig
from vitkit.models.vit import ViT


def sleeper(seconds: float, calls: list[str], name: str) -> Forward:
    def forward(batch: torch.Tensor) -> None:
        calls.append(name)
        time.sleep(seconds)

    return forward


def test_interleaved_rounds_rotate_and_ratios_compare_within_rounds() -> None:
    calls: list[str] = []
    contenders = [
        # long enough that a busy machine's wake-up delay (a few ms) cannot blur the 3x ratio
        Contender("fast", sleeper(0.01, calls, "fast"), 1e9),
        Contender("slow", sleeper(0.03, calls, "slow"), 1e9),
    ]
    report = run_interleaved(
        contenders, torch.zeros(4, 1), rounds=3, repeats=2, warmup=1, probe_dtype=None,
        measure_memory=False,
    )  # fmt: skip
    timed = calls[2:]  # after one warm-up call each
    assert timed[:4] == ["fast", "fast", "slow", "slow"]
    assert timed[4:8] == ["slow", "slow", "fast", "fast"]  # round 2 starts with the other one
    fast, slow = report.results
    assert len(fast.round_seconds) == 3
    assert fast.images_per_s > slow.images_per_s
    assert 2.0 < slow.ratios["fast"] < 4.5  # 3x slower, measured within rounds
    assert fast.ratios["fast"] == 1.0
    assert fast.gflops == pytest.approx(fast.images_per_s)  # 1 GFLOP per image


def test_markdown_block_goes_into_its_section_only(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(  # "Model forward" finds the first heading, not "Model forwards"
        "# B\n\n## Model forward (vs peers)\n\n_not yet measured_\n\n## Model forwards\n\n"
        "## Preprocessing\n\nkeep me\n"
    )
    write_markdown_block(path, "Model forward", "a", "table A v1")
    write_markdown_block(path, "Model forward", "b", "table B")
    write_markdown_block(path, "Model forward", "a", "table A v2")
    text = path.read_text()
    forward, preprocessing = text.split("## Model forwards")
    assert "table A v2" in forward and "table A v1" not in text
    assert forward.index("table A v2") < forward.index("table B")  # replaced in place
    assert "_not yet measured_" not in forward
    assert preprocessing == "\n\n## Preprocessing\n\nkeep me\n"
    write_markdown_block(path, "GPU", "g", "gpu table")  # a missing section is appended
    assert path.read_text().rstrip().endswith("<!-- /bench:g -->")


def test_flop_counts_match_torch_flop_counter() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    config = ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8, num_labels=10,
    )  # fmt: skip
    model = ViT(config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    counted = {}
    for name, function in (("full", model), ("logits", model.forward_logits)):
        # the math kernel runs attention as matmuls the counter sees (flash on CPU it skips)
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            function(pixels)
        counted[name] = counter.get_total_flops() / 2
    assert logits_path_flops(model) == pytest.approx(counted["logits"], rel=1e-6)
    assert model.flops_per_image() == pytest.approx(counted["full"], rel=1e-6)


def test_sustained_gemm_rate_runs_for_the_time_asked_and_reports_both_rates() -> None:
    durations = iter([0.1, 0.1, 0.4] + [1.0] * 10)  # seconds the fake clock gives each product
    now = [0.0]
    pending: list[float] = []

    def clock() -> float:  # time_call reads it before and after each product
        if pending:
            now[0] += pending.pop()
        else:
            pending.append(next(durations))
        return now[0]

    rate = sustained_gemm_rate("cpu", size=64, seconds=0.5, repeats=2, clock=clock)
    flops = 2 * 64**3 / 1e9
    assert rate.sustained == pytest.approx(3 * flops / 0.6)  # stopped once 0.5 s had passed
    assert rate.burst == pytest.approx(flops / 0.1)  # the median product


def test_gemm_probe_and_peak_memory_measure_something() -> None:
    rate = sustained_gemm_rate("cpu", size=256, repeats=1)
    assert rate.sustained > 0.1 and rate.burst > 0.1
    if sys.platform.startswith("linux"):
        peak = peak_memory(lambda b: torch.ones(64, 2**20).sum(), torch.zeros(1), "cpu")
        assert peak is not None and peak > 100 * 2**20  # 256 MB allocated and touched


def test_vitkit_bench_cli_writes_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "BENCHMARKS.md"
    code = main([
        "bench", "--model", "vit-tiny-patch16-224", "--image-size", "32", "--batch-sizes", "2",
        "--rounds", "2", "--repeats", "1", "--warmup", "1", "--threads", "1",
        "--probe-seconds", "0.2", "--against", "transformers,timm", "--write-md", str(out),
    ])  # fmt: skip
    assert code == 0
    table = out.read_text()
    for row in ("| vitkit (", "| transformers-sdpa |", "| timm |", "% of GEMM", "torch 2.",
                "sustained over 0.2 s"):  # fmt: skip
        assert row in table
    assert "## Model forward" in table


def test_vitkit_bench_refuses_bf16_on_this_cpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    assert main(["bench", "--precision", "bf16", "--model", "vit-tiny-patch16-224"]) == 1
    assert "AVX-512 BF16 or AMX" in capsys.readouterr().err


def test_int8_agreement_on_real_photo_crops() -> None:
    from vitkit.bench import agreement

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8, num_labels=5,
    )  # fmt: skip
    model = ViT(config).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    pixels = agreement.photo_crops(32, (32, 32))
    result = agreement.tensor_agreement(model, pixels, "int8", labels=[i % 5 for i in range(32)])
    assert result.images == 32
    assert result.top1_agreement >= 0.8
    assert result.macro_f1_change is not None and abs(result.macro_f1_change) < 0.2
    assert "int8 vs fp32 on 32 images" in result.summary()


def test_agreement_runs_both_precisions_as_the_runtime_runs_a_batch_here() -> None:
    from vitkit.bench import agreement

    model = ViT(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, image_size=32, patch_size=8, num_labels=3))  # fmt: skip
    with runtime.num_threads(2):
        fp32, int8 = agreement.precision_pair(model.eval(), "int8")
    # a fixed count (not "auto", which follows the load): 8 images then run as 2 sub-batches
    assert fp32.threads == int8.threads == 2  # type: ignore[attr-defined]
    assert runtime.worth_splitting(8, int8.threads)  # type: ignore[attr-defined]
