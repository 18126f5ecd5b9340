"""vitkit.inference.runtime: precision checks, thread choice, int8, the [CLS]-only logits path."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from vitkit.bench.sample_data import photo_batch
from vitkit.errors import VitkitError
from vitkit.inference import runtime
from vitkit.models.config import ViTConfig
from vitkit.models.vit import ViT


def small_vit(num_labels: int = 10, image_size: int = 32) -> ViT:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=image_size,
        patch_size=8,
        num_labels=num_labels,
        layer_norm_eps=1e-6,
    )
    model = ViT(config).eval()
    if num_labels:
        with torch.no_grad():  # a spread-out head, so rankings are not decided by rounding
            model.head.weight.normal_(0, 1.0)
    return model


def test_bf16_refused_on_cpu_without_native_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(runtime.UnsupportedPrecisionError, match="AVX-512 BF16 or AMX"):
        runtime.check_precision("bf16", "cpu")
    with pytest.raises(runtime.UnsupportedPrecisionError, match="fp16"):
        runtime.check_precision("fp16", "cpu")
    runtime.check_precision("bf16", "cpu", force=True)  # --force measures it anyway
    runtime.check_precision("int8", "cpu")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    runtime.check_precision("bf16", "cpu")


def test_unknown_precision_and_int8_on_gpu_refused() -> None:
    with pytest.raises(runtime.UnsupportedPrecisionError, match="choose one of"):
        runtime.check_precision("int4", "cpu")
    with pytest.raises(runtime.UnsupportedPrecisionError, match="CPU only"):
        runtime.check_precision("int8", "cuda")


@pytest.mark.parametrize(
    ("batch", "flops", "cores", "busy", "expected"),
    [
        (1, 2.5e9, 2, 0, 1),  # ViT-Ti, one image: too little work for two threads
        (8, 35e9, 2, 0, 2),  # ViT-B, batch 8: both cores
        (8, 35e9, 2, 1, 1),  # another process running: leave it its core
        (8, 35e9, 2, 9, 1),  # overloaded machine: never below one
        (1, 35e9, 16, 0, 8),  # ViT-B, one image, big machine: limited by work
        (64, 35e9, 16, 0, 16),
    ],
)
def test_choose_threads(batch: int, flops: float, cores: int, busy: int, expected: int) -> None:
    assert runtime.choose_threads(batch, flops, cores=cores, busy=busy) == expected


def test_num_threads_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with runtime.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_forward_logits_equals_timm_on_the_same_weights() -> None:
    from vitkit.bench.peers import timm_twin

    model = small_vit()
    twin = timm_twin(model)
    pixels = photo_batch(4, (32, 32))
    with torch.inference_mode():
        expected = twin(pixels)
        torch.testing.assert_close(model.forward_logits(pixels), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(pixels).logits, expected, atol=1e-5, rtol=1e-5)
        other_size = photo_batch(2, (48, 40))  # position embeddings resampled on the fly
        torch.testing.assert_close(
            model.forward_logits(other_size), model(other_size).logits, atol=1e-5, rtol=1e-5
        )


def test_forward_logits_needs_a_head() -> None:
    with pytest.raises(ValueError, match="classification head"):
        small_vit(num_labels=0).forward_logits(torch.zeros(1, 3, 32, 32))


def test_int8_quantizes_block_linears_of_a_copy() -> None:
    model = small_vit()
    fast = runtime.optimize(model, precision="int8", threads=None)
    quantized = fast.model
    assert type(model.blocks[0].mlp.fc1) is nn.Linear  # the caller's model is untouched
    assert type(quantized.blocks[0].mlp.fc1) is not nn.Linear
    assert type(quantized.head) is nn.Linear  # the head decides the ranking: kept fp32
    # the fp32 parts are shared with the caller's model, not copied
    assert quantized.head.weight.data_ptr() == model.head.weight.data_ptr()
    pixels = photo_batch(8, (32, 32))
    with torch.inference_mode():
        reference = model.forward_logits(pixels)
    logits = fast(pixels)
    relative = (logits - reference).norm() / reference.norm()
    assert relative < 0.05, relative
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75


def test_int8_equals_torch_quantize_dynamic_bit_for_bit() -> None:
    """vitkit's one-pass int8 copy gives the logits of torch's quantize_dynamic (per-channel
    weights, the same prepacked kernels), on a real photo batch."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = small_vit()
    ours = runtime.quantize_int8(model)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = runtime.int8_engine()
    try:
        with pytest.warns(Warning):  # torch's deprecation notices for quantize_dynamic
            reference = quantize_dynamic(
                model, {"blocks": per_channel_dynamic_qconfig}, dtype=torch.qint8
            )
    finally:
        torch.backends.quantized.engine = previous
    pixels = photo_batch(6, (32, 32))
    with torch.inference_mode():
        assert torch.equal(ours.forward_logits(pixels), reference.forward_logits(pixels))
        assert not torch.equal(ours.forward_logits(pixels), model.forward_logits(pixels))


def test_int8_batch_runs_as_one_sub_batch_per_thread() -> None:
    model = small_vit()
    split = runtime.optimize(model, precision="int8", threads=2)
    whole = runtime.optimize(model, precision="int8", threads=1)
    pixels = photo_batch(8, (32, 32))
    before = torch.get_num_threads()
    logits = split(pixels)
    assert split._core_split is not None and split._core_split.workers == 2  # it did split
    assert torch.get_num_threads() == before  # the workers' one-thread setting stays theirs
    # each half is exactly what the same int8 model gives for that half alone
    halves = torch.cat([whole(half) for half in pixels.tensor_split(2)])
    assert torch.equal(logits, halves)


def test_core_split_needs_two_threads_and_two_images_per_thread() -> None:
    from vitkit.inference.core_split import worth_splitting

    assert worth_splitting(8, 2) and worth_splitting(4, 2)
    assert not worth_splitting(3, 2)  # one image per sub-batch ran slower
    assert not worth_splitting(8, 1)
    assert not worth_splitting(8, None)
    model = small_vit()
    fp32 = runtime.optimize(model, precision="fp32", threads=2)
    pixels = photo_batch(8, (32, 32))
    with torch.inference_mode():
        expected = model.forward_logits(pixels)
    torch.testing.assert_close(fp32(pixels), expected)  # same numbers up to float rounding
    assert fp32._core_split is not None
    fp32(pixels[:3])  # too few images: intra-op threads, the runner is kept for later
    assert fp32._core_split.workers == 2


def test_optimize_fp32_gives_the_model_logits_and_keeps_threads() -> None:
    model = small_vit()
    before = torch.get_num_threads()
    fast = runtime.optimize(model, precision="fp32", threads="auto")
    pixels = photo_batch(3, (32, 32))
    with torch.inference_mode():
        expected = model(pixels).logits
    torch.testing.assert_close(fast(pixels), expected)
    assert torch.get_num_threads() == before


def test_bf16_forced_on_cpu_runs_close_to_fp32() -> None:
    model = small_vit()
    pixels = photo_batch(2, (32, 32))
    with torch.inference_mode():
        expected = model(pixels).logits
    fast = runtime.optimize(model, precision="bf16", force=True, threads=None)
    logits = fast(pixels)
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - expected).norm() / expected.norm() < 0.05


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_tuning_is_on_and_idempotent() -> None:
    assert runtime.tune_cpu_allocator() is True
    assert runtime.tune_cpu_allocator() is True


def test_cpu_has_fast_half_reads_flags() -> None:
    assert not runtime.cpu_has_fast_half("bf16", {"avx2"})
    assert runtime.cpu_has_fast_half("bf16", {"amx_bf16"})
    assert runtime.cpu_has_fast_half("fp16", {"avx512_fp16"})
    assert runtime.cpu_has_fast_half("fp32", set())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_cuda_matches_fp32_top1() -> None:
    model = small_vit()
    pixels = photo_batch(8, (32, 32))
    with torch.inference_mode():
        expected = model(pixels).logits
    fast = runtime.optimize(model, precision="bf16", device="cuda")
    logits = fast(pixels).float().cpu()
    assert (logits - expected).norm() / expected.norm() < 0.05
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast


def test_the_cli_offers_exactly_the_runtimes_precisions() -> None:
    from vitkit.cli import build_parser

    parser = build_parser()
    for command in (["predict", "x.jpg"], ["serve"], ["bench"]):
        for precision in runtime.PRECISIONS:
            assert parser.parse_args([*command, "--precision", precision]).precision == precision


def test_embeddings_run_on_the_int8_model_in_sub_batches() -> None:
    """`vitkit embed --precision int8` embeds with the int8 model (it used to quantize, then
    embed in fp32), split per core like the logits."""
    model = small_vit()
    one = runtime.optimize(model, precision="int8", threads=1)
    split = runtime.optimize(model, precision="int8", threads=2)
    pixels = photo_batch(8, (32, 32))
    with torch.inference_mode():
        int8_whole = one.model.forward_embedding(pixels, "cls")
        fp32 = model.forward_embedding(pixels, "cls")
    assert torch.equal(one.embed(pixels, "cls"), int8_whole)
    assert not torch.equal(int8_whole, fp32)
    halves = torch.cat([one.embed(half, "cls") for half in pixels.tensor_split(2)])
    assert torch.equal(split.embed(pixels, "cls"), halves)


def test_a_given_thread_count_always_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # Work enough for every core, and a machine that looks fully busy: "auto" takes one thread;
    # the user's number wins all the same.
    monkeypatch.setattr(runtime, "MIN_FLOPS_PER_THREAD", 1.0)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.setattr(runtime, "other_running_tasks", lambda: 64)
    model = small_vit()
    seen: list[int] = []

    def record(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return model(pixels).logits

    pixels = photo_batch(1, (32, 32))
    runtime.optimize(model, threads="auto").apply(record, pixels)
    runtime.optimize(model, threads=3).apply(record, pixels)
    monkeypatch.setattr(runtime, "other_running_tasks", lambda: 0)
    runtime.optimize(model, threads="auto").apply(record, pixels)  # idle: every core
    assert seen == [1, 3, 4]


@pytest.mark.parametrize("bad", [0, -2, "two", "1.5"])
def test_impossible_thread_counts_are_refused(bad: object) -> None:
    with pytest.raises(VitkitError, match="expected 'auto' or a whole number"):
        runtime.optimize(small_vit(), threads=bad)  # type: ignore[arg-type]
