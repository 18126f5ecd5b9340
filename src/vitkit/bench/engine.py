"""The benchmark engine: contenders timed side by side in one process, in interleaved rounds.

A noisy, shared machine drifts in speed from minute to minute, so nothing is compared across
minutes. Each round times the GEMM probe and every contender back to back (the order rotated
each round), and a contender's figure is the median over rounds of its per-round median.
Ratios between contenders are taken within each round and then their median: that cancels the
drift the absolute numbers still carry. FLOPs count what a contender executes (matmuls only),
so GFLOP/s over the probe's GEMM rate says how close to the machine's matmul speed it runs; the
probe runs products back to back for about as long as a forward (``sustained_gemm_rate``).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitkit.atomic_files import atomic_write_text
from vitkit.bench.peers import hf_twin, timm_twin, twin_problem
from vitkit.checkpoints import load_model
from vitkit.checkpoints.onnx import OnnxModel, export_onnx, quantize_onnx_int8
from vitkit.inference import runtime
from vitkit.models.config import parse_preset_name, preset
from vitkit.models.vit import ViT

Forward = Callable[[Any], Any]


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
def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


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
def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    """Give glibc's free heap back to the OS, so the next peak is measured from a clean floor."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(forward: Forward, batch: Any, device: str | torch.device) -> int | None:
    """Bytes one forward adds at its peak (activations and workspaces; weights excluded).

    CUDA: the caching allocator's exact peak. CPU (Linux): resident memory sampled every
    0.5 ms from /proc, after returning the free heap to the OS: an estimate, good to a few MB.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            forward(batch)
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if not os.path.exists("/proc/self/statm"):
        return None
    gc.collect()
    _malloc_trim()
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with torch.inference_mode():
        forward(batch)
    done.set()
    sampler.join()
    return max(0, peak - base)


# ---- the interleaved run ----------------------------------------------------------------------
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


# ---- FLOPs ------------------------------------------------------------------------------------
def load_bench_model(name: str, image_size: int | None) -> tuple[Any, dict[str, Any] | None]:
    """(model, its checkpoint's preprocessor_config or None) for ``vitkit bench --model``: a
    checkpoint of any registered type, or a ViT preset name with seeded random weights
    (LayerNorm eps 1e-6, 1000 classes: timm's twin of the same name)."""
    is_checkpoint = Path(name).exists() or ("/" in name and not name.lower().startswith("vit-"))
    if is_checkpoint:
        loaded = load_model(name, image_size=image_size)
        return loaded.model.eval(), loaded.processor_config
    parse_preset_name(name)  # raises with the list of sizes when the name is neither
    torch.manual_seed(0)
    overrides: dict[str, Any] = {"num_labels": 1000, "layer_norm_eps": 1e-6}
    if image_size:
        overrides["image_size"] = image_size
    return ViT(preset(name, **overrides)).eval(), None


def pick_threads(
    setting: int | str, batch_size: int, model: Any, device: torch.device
) -> int | None:
    """``--threads``: a number, or "auto" (by batch size and machine load); None off the CPU."""
    if device.type != "cpu":
        return None
    if setting == "auto":
        return runtime.auto_threads(batch_size, model)
    return int(setting)


def logits_path_flops(model: Any, image_hw: tuple[int, int] | None = None) -> float:
    """FLOPs of ``model.forward_logits``: for a ViT, the full forward less the last block's
    non-[CLS] work; the full forward for models without that fast path."""
    if not model.capabilities.cls_fast_path:
        return float(model.flops_per_image(image_hw))
    config = model.config
    height, width = image_hw or config.image_hw
    tokens = (height // config.patch_size) * (width // config.patch_size) + 1
    dim, hidden = config.hidden_size, config.intermediate_size
    # projection + MLP of the other tokens, and their attention rows (QK^T and AV)
    skipped_macs = (tokens - 1) * (dim * dim + 2 * dim * hidden + 2 * tokens * dim)
    return float(model.flops_per_image((height, width)) - 2 * skipped_macs)


def weight_bytes(module: Any) -> int:
    """Bytes of parameters and buffers, packed int8 weights included."""
    total = 0
    try:
        state = module.state_dict()
    except Exception:
        return 0
    for value in state.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, tuple):  # packed quantized Linear params: (weight, bias)
            total += sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))
    return total


# ---- machine and markdown ---------------------------------------------------------------------
def machine_info(device: str | torch.device = "cpu") -> dict[str, str]:
    """What a reader needs to judge the numbers: hardware, load, library versions, date."""
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "cores": str(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if os.path.exists("/proc/loadavg"):
        with open("/proc/loadavg") as loadavg:
            info["load average (1/5/15 min)"] = " ".join(loadavg.read().split()[:3])
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    for package in ("transformers", "timm", "onnxruntime"):
        try:
            module = __import__(package)
            info[package] = str(module.__version__)
        except ImportError:
            info[package] = "not installed"
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def _figure(value: float) -> str:
    """Two decimals for small numbers, none for big ones (10451 images/s on a GPU)."""
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def report_table(report: Report) -> str:
    """A markdown table of one report."""
    reference = report.results[0].name
    lines = [
        f"| contender | images/s | ms/image | peak MB (activations) | weights MB | GFLOP/s "
        f"| % of GEMM | {reference} speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in report.results:
        ratio = result.ratios.get(reference, float("nan"))
        speedup = "—" if result.name == reference else f"{ratio:.2f}x"
        name = f"{result.name} ({result.note})" if result.note else result.name
        lines.append(
            f"| {name} | {_figure(result.images_per_s)} | {result.ms_per_image:.3g} "
            f"| {_mb(result.peak_bytes)} | {_mb(result.weight_bytes)} | {_figure(result.gflops)} "
            f"| {100 * result.gflops / report.gemm_rate:.0f}% | {speedup} |"
        )
    return "\n".join(lines)


def _probe_detail(report: Report) -> str:
    """How the probe's figure was taken, and its short-burst reading next to it."""
    if not report.gemm_burst_gflops or not report.gemm_seconds:
        return ""
    burst = statistics.median(report.gemm_burst_gflops)
    return (
        f", sustained over {report.gemm_seconds:g} s of back-to-back products per round "
        f"(their median single product: {burst:.0f} GFLOP/s)"
    )


def report_markdown(report: Report, info: dict[str, str], command: str = "") -> str:
    """Title, conditions and table: one self-contained block for BENCHMARKS.md."""
    spread = (
        f"{min(report.gemm_gflops):.0f}-{max(report.gemm_gflops):.0f}"
        if report.gemm_gflops
        else "n/a"
    )
    rounds = len(report.results[0].round_seconds)
    lines = [
        f"#### {report.title or 'Forward pass'}: batch {report.batch_size}, "
        f"{report.threads} thread(s), {report.device}",
        "",
        (
            "Timed by the process's CPU time, one working thread (immune to other processes). "
            if report.cpu_time
            else ""
        )
        + f"{rounds} interleaved rounds, median; GEMM probe {report.gemm_rate:.0f} GFLOP/s "
        f"(range {spread}) in the same rounds{_probe_detail(report)}. "
        "Speed-up column: median over rounds of "
        f"(contender's time / {report.results[0].name}'s time).",
        "",
        report_table(report),
        "",
        "Machine: " + "; ".join(f"{key} {value}" for key, value in info.items()) + ".",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def write_markdown_block(path: str | Path, section: str, key: str, text: str) -> None:
    """Put ``text`` into BENCHMARKS.md's ``## {section}...`` between markers named ``key``.

    A block with that key is replaced in place; a new key is appended to the section; the
    section's "_not yet measured_" placeholder is dropped. Nothing outside the section changes.
    """
    path = Path(path)
    document = path.read_text() if path.exists() else ""
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    # "Model forward" finds "## Model forward (vitkit vs transformers vs timm)"
    heading = re.search(rf"^## {re.escape(section)}(\W.*)?$", document, flags=re.MULTILINE)
    if heading is None:
        document = document.rstrip() + f"\n\n## {section}\n\n{block}"
        atomic_write_text(path, document)
        return
    following = re.search(r"^## ", document[heading.end() :], flags=re.MULTILINE)
    stop = heading.end() + following.start() if following else len(document)
    body = document[heading.end() : stop]
    if begin in body and end in body:
        body = body[: body.index(begin)] + block + body[body.index(end) + len(end) + 1 :]
    else:
        body = body.replace("_not yet measured_\n", "")
        body = body.rstrip() + "\n\n" + block + "\n"
    document = document[: heading.end()] + body + document[stop:]
    atomic_write_text(path, document)


# ---- inputs -----------------------------------------------------------------------------------
def real_photos() -> list[Any]:
    """The real RGB photos bundled with scikit-image and scikit-learn (uint8 HWC arrays)."""
    import numpy as np

    photos: list[Any] = []
    try:
        from skimage import data

        for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "retina"):
            photos.append(np.ascontiguousarray(getattr(data, name)()[..., :3]))
    except (ImportError, AttributeError, OSError):
        pass
    try:
        from sklearn.datasets import load_sample_images

        photos.extend(load_sample_images().images)
    except ImportError:
        pass
    if not photos:
        raise ModuleNotFoundError("no sample photos: needs scikit-image", name="skimage")
    return photos


def photo_batch(batch_size: int, image_hw: tuple[int, int]) -> torch.Tensor:
    """``batch_size`` real photos resized to ``image_hw``, normalised as ViT expects (mean/std 0.5)."""
    import torch.nn.functional as F

    photos = real_photos()
    tensors = []
    for index in range(batch_size):
        image = torch.tensor(photos[index % len(photos)]).permute(2, 0, 1)[None].float()
        tensors.append(F.interpolate(image, size=image_hw, mode="bilinear", antialias=True))
    return (torch.cat(tensors) / 255 - 0.5) / 0.5


# ---- the contenders of `vitkit bench` ---------------------------------------------------------
PEERS = ("transformers", "timm", "onnx")


def forward_contenders(
    model: Any,
    *,
    precision: str = "fp32",
    against: Sequence[str] = ("transformers", "timm"),
    compile: bool | str = False,
    device: str | torch.device = "cpu",
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Contender]:
    """vitkit at ``precision`` first, then vitkit fp32 (when the precision differs) and the peers.

    Every contender gets ``model``'s weights and the same precision: int8 quantizes the peers'
    Linear layers with the same dynamic quantization; bf16/fp16 casts their weights; ``compile``
    compiles every PyTorch contender. ``model`` itself is not modified.
    """
    import copy

    say = log or (lambda message: None)
    device = torch.device(device)
    image_hw = model.config.image_hw
    full_flops = float(model.flops_per_image(image_hw))
    fast_flops = logits_path_flops(model, image_hw)

    def vitkit_contender(name: str, chosen: str) -> Contender:
        fast = runtime.optimize(
            copy.deepcopy(model),
            precision=chosen,
            device=device,
            compile=compile,
            threads=None,
            force=True,
        )
        fast_path = "[CLS]-only last block" if model.capabilities.cls_fast_path else ""
        note = ", ".join(filter(None, [fast_path, compile_note(compile)]))
        return Contender(name, fast, fast_flops, weight_bytes(fast.model), note)

    contenders = [vitkit_contender("vitkit", precision)]
    if precision != "fp32":
        contenders.append(vitkit_contender("vitkit fp32", "fp32"))
    problem = twin_problem(model)
    builders = {"transformers": (hf_twin, "transformers-sdpa"), "timm": (timm_twin, "timm")}
    for peer in against:
        if peer == "onnx":
            try:
                contenders.extend(
                    _onnx_contenders(model, precision, workdir, full_flops, fast_flops, say)
                )
            except Exception as error:  # an export problem must not cost the other peers' run
                say(f"skipping onnx: {type(error).__name__}: {error}")
            continue
        if peer not in builders:
            raise ValueError(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
        if problem:
            say(f"skipping {peer}: {problem}")
            continue
        build, name = builders[peer]
        try:
            twin = build(model)
        except ImportError as error:
            say(f"skipping {peer}: {error}")
            continue
        contenders.append(_peer_contender(name, twin, precision, compile, device, full_flops))
    return contenders


def compile_note(compile: bool | str) -> str:
    if not compile:
        return ""
    return "torch.compile" + (f" {compile}" if isinstance(compile, str) else "")


def _peer_contender(
    name: str,
    twin: Any,
    precision: str,
    compile: bool | str,
    device: torch.device,
    flops: float,
) -> Contender:
    twin = twin.eval().to(device)
    if precision == "int8":
        twin = runtime.quantize_int8(twin)
    elif precision in runtime.DTYPES:
        twin = twin.to(runtime.DTYPES[precision])
    dtype = runtime.DTYPES.get(precision, torch.float32)
    is_hf = hasattr(twin, "config") and hasattr(twin.config, "model_type")

    def call(pixel_values: torch.Tensor) -> Any:
        output = twin(pixel_values=pixel_values) if is_hf else twin(pixel_values)
        return output.logits if is_hf else output

    mode = compile if isinstance(compile, str) else None
    function = torch.compile(call, dynamic=False, mode=mode) if compile else call

    def forward(pixel_values: torch.Tensor) -> Any:
        with torch.inference_mode():
            return function(pixel_values.to(device, dtype))

    note = compile_note(compile)
    return Contender(name, forward, flops, weight_bytes(twin), note)


def _onnx_contenders(
    model: Any,
    precision: str,
    workdir: str | Path | None,
    full_flops: float,
    fast_flops: float,
    say: Callable[[str], None],
) -> list[Contender]:
    import tempfile

    directory = Path(workdir or tempfile.mkdtemp(prefix="vitkit-bench-onnx-"))
    path = directory / "model-logits.onnx"
    if not path.exists():
        say(f"exporting {path}")
        export_onnx(model, path, outputs="logits")
    threads = torch.get_num_threads()
    contenders = []
    if precision == "int8":
        quantized = directory / "model-logits-int8.onnx"
        if not quantized.exists():
            quantize_onnx_int8(path, quantized)
        runner = OnnxModel(quantized, threads=threads)
        contenders.append(
            Contender(
                "onnxruntime int8", runner.forward_logits, fast_flops, quantized.stat().st_size
            )
        )
    runner32 = OnnxModel(path, threads=threads)
    contenders.append(
        Contender("onnxruntime", runner32.forward_logits, fast_flops, path.stat().st_size)
    )
    return contenders
