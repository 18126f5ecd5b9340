"""GPU: ViT-B/16-224 bf16 inference at batch 256, vitkit vs timm (+ torch.compile) and transformers.

One process, one GPU, interleaved rounds (``vitkit.bench.timing.run_interleaved``), every contender on
the same weights. The bf16 matmul rate is measured in the same rounds (8192^3 products on random
data), so MFU = achieved FLOP/s (the FLOPs each contender executes) / that rate. Then the
end-to-end rate from JPEG files: file bytes read by a prefetch thread, decoded in batches on
the GPU by nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``), resized and normalised on
the GPU (``ImageProcessor.from_uint8``), classified, top-5 back on the host.

    python benchmarks/bench_gpu.py --name gpu_h100     # on the GPU machine
    python scripts/render_benchmarks.py                # then: BENCHMARKS.md from the results

Also runs on a CPU with --device cpu --quick (a smoke test of the script, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from results_io import interleaved_table, spread, write_results
from vitkit.bench.contenders import forward_contenders
from vitkit.bench.memory import synchronize
from vitkit.bench.report import machine_info
from vitkit.bench.sample_data import photo_batch, real_photos
from vitkit.bench.timing import Report, run_interleaved, time_call
from vitkit.inference import runtime
from vitkit.models.config import preset
from vitkit.models.vit import ViT

SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_model(name: str) -> ViT:
    torch.manual_seed(0)
    return ViT(preset(name, num_labels=1000, layer_norm_eps=1e-6)).eval()


def report_dict(report: Report) -> dict[str, Any]:
    return {
        "batch_size": report.batch_size,
        "gemm_gflops": report.gemm_gflops,
        "results": [
            {
                "name": r.name,
                "note": r.note,
                "round_seconds": r.round_seconds,
                "flops_per_image": r.flops_per_image,
                "peak_bytes": r.peak_bytes,
                "weight_bytes": r.weight_bytes,
                "ratios": r.ratios,
            }
            for r in report.results
        ],
    }


def forward_stage(model: ViT, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Eager and compiled contenders of every library, interleaved."""
    eager = forward_contenders(
        model, precision=args.precision, against=["timm", "transformers"], device=device, log=log
    )
    contenders = list(eager)
    for mode in args.compile_modes:
        compile_arg: bool | str = True if mode == "default" else mode
        compiled = forward_contenders(
            model,
            precision=args.precision,
            against=["timm"],
            compile=compile_arg,
            device=device,
            log=log,
        )
        for contender in compiled:
            contender.name += f" compile:{mode}"
        contenders.extend(compiled)
    batch = photo_batch(args.batch_size, model.config.image_hw).to(device)
    started = time.perf_counter()
    report = run_interleaved(
        contenders,
        batch,
        rounds=args.rounds,
        repeats=args.repeats,
        warmup=args.warmup,
        device=device,
        probe_dtype=runtime.DTYPES[args.precision],
        title=f"vit-base-patch16-224 {args.precision}",
        log=log,
    )
    log(f"forward stage {time.perf_counter() - started:.0f}s")
    return report_dict(report)


def sdpa_stage(model: ViT, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """vitkit eager images/s under each SDPA backend alone (the plain model, no priority list)."""
    import copy

    dtype = runtime.DTYPES[args.precision]
    plain = copy.deepcopy(model).to(device, dtype)
    batch = photo_batch(args.batch_size, model.config.image_hw).to(device, dtype)
    rates: dict[str, float] = {}
    for name, backend in SDPA_BACKENDS.items():
        try:
            with sdpa_kernel(backend), torch.inference_mode():
                plain.forward_logits(batch)
                seconds = sorted(
                    time_call(lambda: plain.forward_logits(batch), device) for _ in range(7)
                )
            rates[name] = args.batch_size / seconds[3]
        except RuntimeError as error:
            log(f"sdpa {name}: {str(error)[:120]}")
    return rates


def write_jpegs(directory: Path, count: int, sizes: list[tuple[int, int]]) -> list[Path]:
    """``count`` JPEG files made from the bundled real photos at the given (w, h) sizes."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    photos = [Image.fromarray(p) for p in real_photos()]

    def write(index: int) -> Path:
        width, height = sizes[index % len(sizes)]
        image = photos[index % len(photos)].resize((width, height), Image.BILINEAR)
        path = directory / f"photo_{index:05d}_{width}x{height}.jpg"
        image.save(path, quality=90)
        return path

    with ThreadPoolExecutor(16) as pool:  # PIL encodes without the GIL
        return list(pool.map(write, range(count)))


def end_to_end_stage(model: ViT, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """JPEG files -> top-5 on the GPU, per photo size; decode-only and model-only rates beside it."""
    fast = runtime.optimize(
        model, precision=args.precision, device=device, compile=args.e2e_compile, threads=None
    )
    sizes = [(640, 480)] if args.quick else [(640, 480), (2000, 1500)]
    results: dict[str, Any] = {"compile": args.e2e_compile, "by_size": {}}
    for size in sizes:
        directory = Path(tempfile.mkdtemp(prefix="vitkit-gpu-jpegs-"))
        count = args.batch_size * (2 if args.quick else args.e2e_batches)
        paths = write_jpegs(directory, count, [size])
        results["by_size"][f"{size[0]}x{size[1]}"] = jpeg_pipeline(fast, model, paths, args, device)
    return results


def jpeg_pipeline(
    fast: Any, model: ViT, paths: list[Path], args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """A reader thread reads file bytes and decodes them on a side CUDA stream (nvJPEG, batched)
    plus GPU resize/normalise, while the main stream classifies the previous batch."""
    from torchvision.io import decode_jpeg, read_file

    from vitkit.images.processor import ImageProcessor

    processor = ImageProcessor.for_config(model.config)
    batches = [paths[i : i + args.batch_size] for i in range(0, len(paths), args.batch_size)]
    cuda = device.type == "cuda"

    def decode(datas: list[torch.Tensor]) -> torch.Tensor:
        images = decode_jpeg(datas, device=device) if cuda else [decode_jpeg(d) for d in datas]
        return processor.from_uint8(images)

    def produce(out: queue.Queue[Any]) -> None:
        side = torch.cuda.Stream() if cuda else None
        for group in batches:
            datas = [read_file(str(p)) for p in group]
            if side is None:
                out.put((decode(datas), None))
                continue
            with torch.cuda.stream(side):
                pixels = decode(datas)
                done = torch.cuda.Event()
                done.record(side)
            out.put((pixels, done))
        out.put(None)

    def run_pipeline(classify: bool) -> float:
        pending: queue.Queue[Any] = queue.Queue(maxsize=2)
        producer = threading.Thread(target=produce, args=(pending,), daemon=True)
        synchronize(device)
        start = time.perf_counter()
        producer.start()
        while (item := pending.get()) is not None:
            pixels, done = item
            if done is not None:
                torch.cuda.current_stream().wait_event(done)
                pixels.record_stream(torch.cuda.current_stream())
            if classify:
                fast(pixels).float().softmax(-1).topk(5).indices.cpu()
        synchronize(device)
        producer.join()
        return len(paths) / (time.perf_counter() - start)

    run_pipeline(True)  # warm-up: nvJPEG handles, compile, cuDNN autotune
    end_to_end = sorted(run_pipeline(True) for _ in range(3))[1]
    decode_only = sorted(run_pipeline(False) for _ in range(3))[1]
    pixels = decode([read_file(str(p)) for p in batches[0]])
    fast(pixels)
    model_seconds = sorted(time_call(lambda: fast(pixels), device) for _ in range(7))[3]
    return {
        "images": len(paths),
        "end_to_end_images_per_s": end_to_end,
        "decode_resize_images_per_s": decode_only,
        "model_images_per_s": args.batch_size / model_seconds,
    }


def environment(device: torch.device) -> dict[str, str]:
    info = machine_info(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu memory GiB"] = f"{props.total_memory / 2**30:.0f}"
        info["cuda"] = str(torch.version.cuda)
    return info


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    model = build_model(args.model)
    results: dict[str, Any] = {"environment": environment(device), "args": vars(args)}
    for stage in args.stages:
        started = time.perf_counter()
        try:
            if stage == "forward":
                results["forward"] = forward_stage(model, args, device)
            elif stage == "sdpa":
                results["sdpa"] = sdpa_stage(model, args, device)
            elif stage == "e2e":
                results["end_to_end"] = end_to_end_stage(model, args, device)
        except Exception as error:  # keep what the other stages measured
            log(f"stage {stage} failed: {type(error).__name__}: {error}")
            results[f"{stage}_error"] = f"{type(error).__name__}: {error}"
        log(f"stage {stage}: {time.perf_counter() - started:.0f}s")
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


# ---- results file -------------------------------------------------------------------------------
def forward_table(forward: dict[str, Any]) -> dict[str, Any]:
    """images/s per contender and its time over eager vitkit's, per round (median, min-max)."""
    batch = forward["batch_size"]
    return interleaved_table([{**r, "batch_size": batch} for r in forward["results"]], "vitkit")


def end_to_end_text(results: dict[str, Any]) -> str:
    e2e = results.get("end_to_end")
    if not e2e:
        return ""
    lines = [
        f"End-to-end JPEG files -> top-5, batch {results['args']['batch_size']}, "
        f"torch.compile {e2e['compile']} (read thread + nvJPEG batch decode and GPU resize on a "
        "side stream, overlapped with the model), one pass:",
        "",
        "| photos | files | end-to-end images/s | decode+resize alone | model alone |",
        "|---|---|---|---|---|",
    ]
    for size, row in e2e["by_size"].items():
        lines.append(
            f"| {size} JPEG | {row['images']} | **{row['end_to_end_images_per_s']:.0f}** "
            f"| {row['decode_resize_images_per_s']:.0f} | {row['model_images_per_s']:.0f} |"
        )
    return "\n".join(lines)


def publish(results: dict[str, Any], name: str, command: str) -> Path:
    """Write benchmarks/results/<name>.json from the measured stages."""
    forward = results["forward"]
    batch = forward["batch_size"]
    gemm = spread(forward["gemm_gflops"])
    notes = [
        f"Forward, batch {batch}, {len(forward['gemm_gflops'])} interleaved rounds; "
        f"{results['args']['precision']} weights. The bf16 matmul probe (8192^3, random data) "
        f"ran at {gemm['min'] / 1e3:.0f}-{gemm['max'] / 1e3:.0f} TFLOP/s in the same rounds."
    ]
    if results.get("sdpa"):
        rates = ", ".join(f"{k} {v:.0f}" for k, v in results["sdpa"].items())
        notes.append(f"vitkit eager by SDPA backend alone (images/s, median of 7): {rates}.")
    notes.append(end_to_end_text(results))
    notes += [
        f"{key}: {results[key]}"
        for key in ("forward_error", "sdpa_error", "e2e_error")
        if key in results
    ]
    summary = {
        result["name"]: spread([batch / s for s in result["round_seconds"]])
        for result in forward["results"]
    }
    return write_results(
        name,
        title=f"GPU: ViT-B/16-224 {results['args']['precision']} inference, "
        f"{results['environment'].get('gpu', 'cpu')} ({name})",
        command=command,
        summary=summary,
        rounds=forward["results"],
        table=forward_table(forward),
        notes="\n\n".join(part for part in notes if part),
        extra={k: v for k, v in results.items() if k != "forward"},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="vit-base-patch16-224")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile-modes", default="default,reduce-overhead")
    parser.add_argument("--stages", default="forward,sdpa,e2e")
    parser.add_argument("--e2e-batches", type=int, default=4)
    parser.add_argument("--e2e-compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", default="gpu_results.json", help="stage-by-stage raw JSON")
    parser.add_argument("--name", default="gpu", help="benchmarks/results/NAME.json")
    args = parser.parse_args()
    args.compile_modes = [m for m in args.compile_modes.split(",") if m]
    args.stages = [s for s in args.stages.split(",") if s]
    if args.device == "cpu":
        args.precision = "fp32"
    results = measure(args)
    if "forward" in results:
        print(f"wrote {publish(results, args.name, ' '.join(['python', *sys.argv]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
