"""How a ViT runs fast on the machine at hand: precision, threads, allocator, compilation.

``optimize(model, precision=..., device=...)`` returns a callable ``pixel_values -> logits`` that
applies every choice below; ``vitkit.Classifier`` and ``vitkit bench`` use it. What was measured
to motivate each choice is in BENCHMARKS.md ("Model forward" and "GPU").

- Precision. fp32 everywhere; bf16/fp16 on CUDA (weights cast, attention by SDPA's flash
  kernels); bf16/fp16 on a CPU only with native support (AVX-512 BF16/FP16 or AMX), since
  without it a bf16 matmul runs ~100x slower than fp32; int8 on CPU: dynamic quantization of the
  transformer blocks' Linear layers (weights int8 per output channel, activations quantized
  per batch at run time).
- Threads (CPU). One OpenMP barrier per op means a thread that loses its core stalls the
  whole op: fewer threads when the work is small or other processes are running; a batch with
  >= 2 images per thread runs as one sub-batch per thread instead (``vitkit.inference.core_split``).
- Allocator (CPU, glibc). glibc hands large freed buffers back to the OS, so every forward
  re-faults its activations (~100k page faults and ~7% of the time for ViT-B at batch 8);
  keeping them in the heap removes that. Process-wide, so it also helps anything else running.
- [CLS]-only last block for logits (``ViT.forward_logits``): ~6% fewer FLOPs for ViT-B.

Library calls change nothing process-wide: ``optimize`` and ``vitkit.Classifier`` leave the
allocator, TF32 and cuDNN autotuning alone. The entry points (``vitkit predict/embed/eval/bench``,
the server's start-up) opt in with ``tune_process_for_inference(device)``; a script may too.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn

from vitkit.errors import UnsupportedPrecisionError
from vitkit.inference.core_split import CoreSplit, worth_splitting
from vitkit.inference.int8 import int8_engine, quantize_int8
from vitkit.inference.settings import PRECISIONS, check_threads
from vitkit.models.protocol import require

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Below this much work per thread (FLOPs per forward), a second thread costs more in OpenMP
# fork/join and barriers than it brings (ViT-Ti at batch 1 is 2.5 GFLOP).
MIN_FLOPS_PER_THREAD = 4e9


__all__ = [
    "PRECISIONS",
    "FastForward",
    "UnsupportedPrecisionError",
    "int8_engine",
    "optimize",
    "quantize_int8",
]


# ---- CPU capabilities -------------------------------------------------------------------------
def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_half(precision: str, flags: set[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16/fp16 natively (else PyTorch emulates it, ~100x slower)."""
    flags = cpu_flags() if flags is None else flags
    if precision == "bf16":
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    if precision == "fp16":
        return bool(flags & {"avx512_fp16", "amx_fp16"})
    return True


def check_precision(precision: str, device: str | torch.device, *, force: bool = False) -> None:
    """Refuse precisions this device cannot run well, with the reason and the way out."""
    if precision not in PRECISIONS:
        raise UnsupportedPrecisionError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}"
        )
    kind = torch.device(device).type
    if precision == "int8" and kind != "cpu":
        raise UnsupportedPrecisionError(
            f"int8 dynamic quantization runs on the CPU only, not on {kind}: "
            "use --precision bf16 or fp16 on a GPU"
        )
    if kind == "cpu" and not force and not cpu_has_fast_half(precision):
        needs = "AVX-512 BF16 or AMX" if precision == "bf16" else "AVX-512 FP16 or AMX"
        raise UnsupportedPrecisionError(
            f"this CPU has no native {precision} matrix units ({needs} not in /proc/cpuinfo "
            f"flags): {precision} would run ~100x slower than fp32. Use fp32 or int8 "
            "(or --force to measure it anyway)"
        )


# ---- threads ----------------------------------------------------------------------------------
def usable_cores() -> int:
    """CPUs this process may run on (affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def other_running_tasks(samples: int = 5, gap_s: float = 0.0005) -> int:
    """Runnable tasks of OTHER processes right now: the least of ``samples`` looks ``gap_s`` apart.

    ``/proc/loadavg``'s 4th field is the machine's count of runnable tasks this instant (not the
    1-minute average, so it does not lag). This process's own runnable threads are subtracted:
    its image-decoding workers, core-split threads and the server's event loop are vitkit's own
    work, not competition for the cores (counting them made a lone `vitkit predict` run its
    forward on one of two cores). One look is a race (a decode thread that falls
    asleep between the two reads counts as someone else's) and catches passing blips (a
    shell, a kernel worker); a process that really competes for a core is runnable in every
    look, so the minimum of a few looks over ~2 ms keeps it and drops the rest (one look in
    four wrongly halved a lone `vitkit predict`'s threads on a 2-core machine).
    """
    looks = []
    for look in range(samples):
        if look:
            time.sleep(gap_s)
        looks.append(_other_running_once())
    return min(looks)


def _other_running_once() -> int:
    try:
        with open("/proc/loadavg") as loadavg:
            running = int(loadavg.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - own_running_threads())


def own_running_threads() -> int:
    """Threads of this process that are runnable now (state R in /proc/self/task/*/stat)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1  # no procfs: only the caller is known to run
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat") as stat:
                # "pid (comm) S ...": the state follows the last ')' (comm may hold spaces)
                state = stat.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        count += state == "R"
    return max(1, count)  # the caller itself is running


def choose_threads(batch_size: int, flops_per_image: float, *, cores: int, busy: int = 0) -> int:
    """Intra-op threads for one forward of ``batch_size`` images.

    At most one thread per ``MIN_FLOPS_PER_THREAD`` of work, and no more than the cores the
    other running tasks leave free: an OpenMP barrier waits for the slowest thread, so a thread
    sharing its core with another process stalls every op (measured here under load: ViT-Ti at
    batch 1 ran 5x faster on 1 thread than on 2).
    """
    by_work = int(batch_size * flops_per_image // MIN_FLOPS_PER_THREAD)
    free = cores - busy
    return max(1, min(cores, by_work, free))


def auto_threads(
    batch_size: int,
    model: Any,
    image_hw: tuple[int, int] | None = None,
    meter: CompetitionMeter | None = None,
) -> int:
    """``choose_threads`` for this machine now and ``model`` (a vitkit ViT).

    The cores others keep busy come from ``meter`` (their CPU time since its last reading)
    where it has a fitting window, else from a look at the run queue (``other_running_tasks``).
    """
    flops_of = getattr(model, "flops_per_image", None)
    flops = float(flops_of(image_hw)) if callable(flops_of) else 1e10
    cores = usable_cores()
    if choose_threads(batch_size, flops, cores=cores) == 1:
        return 1  # too little work for two threads: no need to look at the machine
    busy = meter.busy_cores() if meter is not None else None
    if busy is None:
        busy = other_running_tasks()
    return choose_threads(batch_size, flops, cores=cores, busy=busy)


class CompetitionMeter:
    """Cores other processes kept busy since the last reading: the machine's CPU time (from
    /proc/stat) less this process's, over the wall time between two readings.

    Why not only the run queue: a look at it sees whoever runs at that instant. In `vitkit
    serve` the forward starts just as the last batch's answers go out, when the clients
    (another process) are busy sending the next requests: a 50 ms burst that one look, or five,
    takes for a competitor, halving the threads of a 2-second forward (measured: 5 of 7 batches
    of 8 on one thread at 16 clients, ~2.1 req/s instead of ~3.7). CPU time over the window (the
    previous forward and the gap after it) weighs such bursts by how long they last, and still
    shows a process that keeps a core busy. Windows under ``MIN_WINDOW_S`` say too little and
    over ``MAX_WINDOW_S`` too late: then ``busy_cores`` answers None (look at the run queue).
    """

    MIN_WINDOW_S = 0.2
    MAX_WINDOW_S = 10.0

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None

    def busy_cores(self) -> int | None:
        now = (time.monotonic(), machine_busy_seconds(), time.process_time())
        last, self._last = self._last, now
        if last is None or now[1] < 0:
            return None
        window = now[0] - last[0]
        if not self.MIN_WINDOW_S <= window <= self.MAX_WINDOW_S:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0, round(others / window))


def machine_busy_seconds() -> float:
    """CPU seconds all processes have run since boot on the CPUs this process may use (user,
    nice, system, irq, softirq of their /proc/stat lines; steal and idle left out): work on
    cores outside the affinity mask (a job pinned to 2 of 16 cores) is no competition. -1 where
    /proc/stat cannot be read."""
    allowed = (
        {f"cpu{index}" for index in os.sched_getaffinity(0)}
        if hasattr(os, "sched_getaffinity")
        else None
    )
    ticks = 0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                fields = line.split()
                if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
                    continue
                if allowed is None or fields[0] in allowed:
                    ticks += sum(int(fields[index]) for index in (1, 2, 3, 6, 7))
    except (OSError, ValueError, IndexError):
        return -1.0
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def num_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (None: leave as is), then restore."""
    previous = torch.get_num_threads()
    if count is not None and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def loading_threads() -> contextlib.AbstractContextManager[None]:
    """Intra-op threads for loading a checkpoint (copying tensors, fusing q/k/v): one.

    Loading is memory copies, which a second OpenMP thread barely speeds up and, when the other
    core is busy, slows down: ViT-B/16 loaded in 0.45 s on one thread and 0.9 s on two on
    this 2-core EPYC under load. The entry points wrap their model load in it."""
    return num_threads(1)


# ---- allocator --------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in glibc's heap instead of returning them to the OS.

    By default glibc serves big allocations with mmap (threshold at most 32 MiB) and trims the
    heap top when it exceeds twice that, so each forward pass faults its activations in again:
    ~400 MB of fresh pages per ViT-B batch of 8. Raising the thresholds makes those faults
    vanish; the price is that the process keeps its peak heap (the activations of the largest
    batch) until it exits. Linux/glibc only; returns whether the tuning is in effect.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    settings = (
        (_M_MMAP_THRESHOLD, 256 << 20),
        (_M_TRIM_THRESHOLD, 512 << 20),
        (_M_TOP_PAD, 64 << 20),
    )
    _allocator_tuned = all(mallopt(option, value) == 1 for option, value in settings)
    return _allocator_tuned


# ---- CUDA -------------------------------------------------------------------------------------
def configure_cuda() -> None:
    """TF32 for fp32 matmuls and cuDNN autotuning for the patch-embedding conv."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def tune_process_for_inference(device: str | torch.device | None = None) -> None:
    """Process-wide settings for a process that mostly runs inference: the glibc allocator
    thresholds on a CPU (``tune_cpu_allocator``), TF32 and cuDNN autotuning on CUDA
    (``configure_cuda``). ``None``: the device ``vitkit.load`` would pick (CUDA when present).

    Called by the entry points (CLI, server, bench), never by a library call: it changes
    numerics (TF32) and memory behaviour for everything else the process runs.
    """
    kind = torch.device(device).type if device not in (None, "auto") else None
    if kind in (None, "cpu"):
        tune_cpu_allocator()
    if kind == "cuda" or (kind is None and torch.cuda.is_available()):
        configure_cuda()


def attention_backends(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """SDPA kernel priority: on CUDA, cuDNN attention first (ViT-B/16 bf16 at batch 256 on an
    H100: cuDNN 10.9k images/s, flash 10.6k, efficient 9.6k, math 4.2k), falling back in order."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6: no priorities, let PyTorch choose
        return contextlib.nullcontext()


# ---- the fast callable ------------------------------------------------------------------------
class FastForward:
    """``pixel_values -> logits`` with the runtime choices applied; see ``optimize``."""

    def __init__(
        self,
        model: nn.Module,
        *,
        precision: str,
        device: torch.device,
        compile: bool | str,
        threads: int | str | None,
    ) -> None:
        self.model = model
        self.precision = precision
        self.device = device
        self.dtype = DTYPES.get(precision, torch.float32)
        self.threads = threads
        # every registered model has forward_logits (vitkit.models.protocol)
        logits_fn = cast(Callable[[torch.Tensor], torch.Tensor], model.forward_logits)
        if compile:
            # a mode name ("reduce-overhead": CUDA graphs, "max-autotune") or True: the default
            mode = compile if isinstance(compile, str) else None
            logits_fn = torch.compile(logits_fn, dynamic=False, mode=mode)
        self.logits_fn = logits_fn
        self._core_split: CoreSplit | None = None
        self._meter = CompetitionMeter()  # what other processes take, between forwards

    def thread_count(self, batch_size: int) -> int | None:
        if self.device.type != "cpu" or self.threads is None:
            return None
        if self.threads == "auto":
            return auto_threads(batch_size, self.model, meter=self._meter)
        return int(self.threads)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.apply(self.logits_fn, pixel_values)

    def embed(self, pixel_values: torch.Tensor, pool: str | None) -> torch.Tensor:
        """The model's ``forward_embedding(pixel_values, pool)``, run like the logits (threads,
        sub-batches, the int8 / bf16 copy of the model)."""
        embedding = cast(Callable[..., torch.Tensor], self.model.forward_embedding)
        return self.apply(lambda pixels: embedding(pixels, pool), pixel_values)

    def apply(
        self, function: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """``function(pixel_values)`` (a forward of ``self.model``, batch first in and out) with
        this device, dtype and thread choice: one sub-batch per core when the batch is big
        enough (``vitkit.inference.core_split``), else the chosen intra-op threads."""
        pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
        threads = self.thread_count(pixel_values.shape[0])
        if self.device.type == "cpu" and worth_splitting(pixel_values.shape[0], threads):
            assert threads is not None
            return self._split(threads)(function, pixel_values)
        with torch.inference_mode(), num_threads(threads), attention_backends(self.device):
            return function(pixel_values)

    def _split(self, workers: int) -> CoreSplit:
        """The sub-batch runner for ``workers`` cores (kept: its threads are reused)."""
        if self._core_split is None or self._core_split.workers != workers:
            if self._core_split is not None:
                self._core_split.close()
            self._core_split = CoreSplit(workers)
        return self._core_split


def optimize(
    model: nn.Module,
    *,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    compile: bool | str = False,
    threads: int | str | None = "auto",
    force: bool = False,
) -> FastForward:
    """Prepare ``model`` (any registered model: ``vitkit.models.protocol``) for fast inference
    and return ``pixel_values -> logits``.

    precision: fp32 | bf16 | fp16 (weights cast; CUDA, or a CPU with native units) | int8
    (CPU). compile: wrap the forward in ``torch.compile`` (minutes to compile on a small CPU;
    pays on GPUs); a string is the compile mode ("reduce-overhead" adds CUDA graphs).
    threads: "auto" (by batch size and machine load), a number, or None (leave as is).
    The model passed in is left as it is: int8 and bf16/fp16 work on copies. Nothing
    process-wide is changed (see ``tune_process_for_inference``).
    """
    device = torch.device(device)
    check_precision(precision, device, force=force)
    threads = check_threads(threads)
    model = model.eval().to(device)
    if precision == "int8":
        require(model, "int8", "run in int8")
        model = quantize_int8(model)
    elif precision in ("bf16", "fp16"):
        model = copy.deepcopy(model).to(DTYPES[precision])  # the caller's fp32 model stays
    return FastForward(model, precision=precision, device=device, compile=compile, threads=threads)


def start_up_timings(
    model: nn.Module,
    *,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds a process spends getting ``model`` from loaded to answering: preparing it for
    ``precision`` (``optimize``: the int8 quantization, the bf16 copy), the first forward of
    ``batch_size`` images, and a steady forward after it (the median of ``repeats``).

    What `vitkit info --timings` shows; the inputs are noise (a forward's cost does not depend
    on the pixel values). Runs with the thread choice `vitkit predict` makes.
    """

    config: Any = model.config  # every registered model's config says its size
    height, width = config.image_hw
    pixels = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))

    def timed(function: Callable[[], Any]) -> float:
        started = time.perf_counter()
        function()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    fast: list[FastForward] = []
    prepare = timed(lambda: fast.append(optimize(model, precision=precision, device=device)))
    first = timed(lambda: fast[0](pixels))
    steady = sorted(timed(lambda: fast[0](pixels)) for _ in range(max(1, repeats)))
    return {
        "prepare_s": prepare,
        "first_forward_s": first,
        "steady_forward_s": steady[len(steady) // 2],
        "threads": float(fast[0].thread_count(batch_size) or torch.get_num_threads()),
    }
