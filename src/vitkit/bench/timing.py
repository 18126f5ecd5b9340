"""Timing: contenders timed side by side in one process, in interleaved rounds.

A noisy, shared machine drifts in speed from minute to minute, so nothing is compared across
minutes. Each round times the GEMM probe and every contender back to back (the order rotated
each round), and a contender's figure is the median over rounds of its per-round median.
Ratios between contenders are taken within each round and then their median: that cancels the
drift the absolute numbers still carry. FLOPs count what a contender executes (matmuls only),
so GFLOP/s over the probe's GEMM rate says how close to the machine's matmul speed it runs; the
probe runs products back to back for about as long as a forward (``sustained_gemm_rate``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vitkit.bench.memory import Forward, peak_memory, synchronize


@dataclass
class Contender:
    """One way of running the model: ``forward(batch)`` does a full forward pass."""

    name: str
    forward: Forward
    flops_per_image: float
    weight_bytes: int = 0
    note: str = ""


@dataclass
class Result:
    name: str
    batch_size: int
    round_seconds: list[float]  # per round: median seconds per batch
    flops_per_image: float
    peak_bytes: int | None = None
    weight_bytes: int = 0
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)  # median of per-round time ratios

    @property
    def seconds(self) -> float:
        return statistics.median(self.round_seconds)

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.seconds

    @property
    def ms_per_image(self) -> float:
        return 1e3 * self.seconds / self.batch_size

    @property
    def gflops(self) -> float:
        return self.flops_per_image * self.images_per_s / 1e9


@dataclass
class Report:
    batch_size: int
    threads: int
    results: list[Result]
    gemm_gflops: list[float]  # per round: the sustained rate (``sustained_gemm_rate``)
    device: str
    title: str = ""
    cpu_time: bool = False  # timed by the working thread's CPU time, not the wall clock
    gemm_burst_gflops: list[float] = field(default_factory=list)  # per round: median product
    gemm_seconds: float = 0.0  # how long each round's probe ran products back to back

    @property
    def gemm_rate(self) -> float:
        return statistics.median(self.gemm_gflops) if self.gemm_gflops else float("nan")

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)


# ---- timing -----------------------------------------------------------------------------------
def time_call(
    function: Callable[[], Any],
    device: str | torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds for one call, the device's queue drained on both sides.

    ``clock=time.process_time`` counts this process's CPU time instead: with one thread doing
    the work (``--threads 1``), that is the work itself, unaffected by other processes taking
    the core (caches aside) - the way to compare on a busy machine. (Not ``thread_time``:
    onnxruntime computes on a thread of its own.)
    """
    synchronize(device)
    start = clock()
    function()
    synchronize(device)
    return clock() - start


@dataclass(frozen=True)
class GemmRate:
    sustained: float  # all products' FLOPs over all their time, GFLOP/s
    burst: float  # from the median product's time, GFLOP/s


def sustained_gemm_rate(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    *,
    seconds: float = 0.0,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> GemmRate:
    """This machine's matmul rate now: square products back to back for ``seconds`` (and at
    least ``repeats`` of them). 1536 on a CPU (~7 GFLOP, tens of ms each); 8192 on a GPU.

    Why both figures: on a shared machine one ~40 ms product often lands in a quiet moment, so the
    median of a few short ones reads the machine's best speed (``burst``), while a contender's
    forward runs for seconds through its neighbours' busy moments too. Comparing a model with
    the GEMM rate sustained over a similar time (``sustained``) compares like with like.
    """
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 1536)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    calls: list[float] = []
    with torch.inference_mode():
        a @ b  # warm-up: thread pool, cuBLAS handle
        while len(calls) < repeats or sum(calls) < seconds:
            calls.append(time_call(lambda: a @ b, device, clock))
    flops = 2 * size**3
    return GemmRate(
        sustained=flops * len(calls) / sum(calls) / 1e9,
        burst=flops / statistics.median(calls) / 1e9,
    )


# ---- memory -----------------------------------------------------------------------------------
def run_interleaved(
    contenders: Sequence[Contender],
    batch: Any,
    *,
    rounds: int = 7,
    repeats: int = 3,
    warmup: int = 2,
    device: str | torch.device = "cpu",
    probe_dtype: torch.dtype | None = torch.float32,
    probe_seconds: float = 1.0,
    measure_memory: bool = True,
    reference: str | None = None,
    title: str = "",
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Report:
    """Time every contender on ``batch`` in ``rounds`` interleaved rounds; see the module doc.

    ``batch`` is what each ``forward`` takes: a tensor of images, or a list of files for an
    end-to-end run; ``len(batch)`` images are counted per call.

    ``reference`` (default: the first contender) is the one the others are compared with:
    ``result.ratios[reference]`` is the median over rounds of (this contender's time / the
    reference's time in the same round): > 1 means the reference is faster.
    """
    if not contenders:
        raise ValueError("no contenders to benchmark")
    reference = reference or contenders[0].name
    say = log or (lambda message: None)
    with torch.inference_mode():
        for contender in contenders:
            say(f"warm-up {contender.name}")
            for _ in range(warmup):
                contender.forward(batch)
    peaks = {
        c.name: peak_memory(c.forward, batch, device) if measure_memory else None
        for c in contenders
    }
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    gemm: list[GemmRate] = []
    for round_index in range(rounds):
        if probe_dtype is not None:
            gemm.append(
                sustained_gemm_rate(device, probe_dtype, seconds=probe_seconds, clock=clock)
            )
        shift = round_index % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            times[contender.name].append(_median_time(contender, batch, repeats, device, clock))
        say(_round_line(round_index, rounds, len(batch), times, gemm))
    return Report(
        len(batch),
        torch.get_num_threads(),
        [_result(c, len(batch), times, reference, peaks[c.name]) for c in contenders],
        [rate.sustained for rate in gemm],
        str(torch.device(device)),
        title,
        cpu_time=clock in (time.process_time, time.thread_time),
        gemm_burst_gflops=[rate.burst for rate in gemm],
        gemm_seconds=probe_seconds,
    )


def _round_line(
    index: int, rounds: int, images: int, times: dict[str, list[float]], gemm: list[GemmRate]
) -> str:
    """The progress line of one finished round: each contender's rate, and the GEMM probe's."""
    rates = ", ".join(f"{name} {images / t[-1]:.2f} img/s" for name, t in times.items())
    probe = f", GEMM {gemm[-1].sustained:.0f} GFLOP/s" if gemm else ""
    return f"round {index + 1}/{rounds}: {rates}{probe}"


def _result(
    contender: Contender,
    images: int,
    times: dict[str, list[float]],
    reference: str,
    peak: int | None,
) -> Result:
    """One contender's row; its ratio to the reference is the median over rounds of (its time /
    the reference's time in the same round): > 1 means the reference ran faster."""
    mine = times[contender.name]
    ratio = statistics.median(m / r for m, r in zip(mine, times[reference], strict=True))
    return Result(
        contender.name,
        images,
        mine,
        contender.flops_per_image,
        peak,
        contender.weight_bytes,
        contender.note,
        {reference: ratio},
    )


def _median_time(
    contender: Contender,
    batch: Any,
    repeats: int,
    device: str | torch.device,
    clock: Callable[[], float],
) -> float:
    with torch.inference_mode():
        samples = [
            time_call(lambda: contender.forward(batch), device, clock) for _ in range(repeats)
        ]
    return statistics.median(samples)
