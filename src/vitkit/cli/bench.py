"""`vitkit bench`: vitkit's forward pass side by side with transformers and timm, same weights."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from vitkit.cli._common import add_precision_option, add_threads_option

EPILOG = """\
examples:
  vitkit bench                                       # ViT-B/16-224, batches 1 and 8, vs transformers+timm
  vitkit bench --batch-sizes 8 --rounds 9 --write-md # record the table in BENCHMARKS.md
  vitkit bench --precision int8 --against transformers,timm,onnx
  vitkit bench --model vit-small-patch16-224 --batch-sizes 1,8,32 --threads 1
  vitkit bench --model ./my-finetuned-vit --precision int8 --agreement ./test_images/
  vitkit bench --device cuda --precision bf16 --batch-sizes 256 --compile

Every contender runs the same weights (copied from vitkit's model) in one process, in
interleaved rounds (order rotated each round), warm-up first; each figure is the median over
rounds. A machine GEMM probe runs in every round: '% of GEMM' compares each contender's
achieved GFLOP/s with it. bf16/fp16 are refused on CPUs without native bf16/fp16 units
(~100x slower than fp32 there) unless --force.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the forward pass against transformers and timm",
        description="Throughput, latency, memory and GFLOP/s of vitkit vs its peers, same weights.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workload_group(parser.add_argument_group("what runs"))
    add_timing_group(parser.add_argument_group("how it is timed"))
    add_output_group(parser.add_argument_group("outputs"))
    parser.set_defaults(func=run)


def add_workload_group(group: Any) -> None:
    group.add_argument(
        "--model",
        "-m",
        default="vit-base-patch16-224",
        help="a preset name (random weights, 1000 classes) or a checkpoint path / hub id "
        "(default vit-base-patch16-224)",
    )
    group.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    group.add_argument(
        "--image-size", type=int, default=None, help="resolution (default: the model's)"
    )
    add_precision_option(group)
    group.add_argument(
        "--compile", action="store_true", help="torch.compile every PyTorch contender"
    )
    group.add_argument(
        "--against",
        default="transformers,timm",
        help="peers: any of transformers,timm,onnx, or 'none' (default transformers,timm)",
    )
    group.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    group.add_argument(
        "--force", action="store_true", help="run bf16/fp16 even on a CPU without support"
    )
    add_threads_option(group)


def add_timing_group(group: Any) -> None:
    group.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    group.add_argument("--repeats", type=int, default=3, help="timed calls per round (default 3)")
    group.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    group.add_argument(
        "--probe-seconds",
        type=float,
        default=1.0,
        help="how long each round's GEMM probe runs square products back to back; %% of GEMM "
        "uses the rate sustained over that time, as a forward is (default 1.0)",
    )
    group.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by the process's CPU time with one working thread (implies --threads 1): "
        "comparisons that hold on a busy machine",
    )
    group.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")


def add_output_group(group: Any) -> None:
    group.add_argument(
        "--agreement",
        metavar="FOLDER",
        nargs="?",
        const="photos",
        default=None,
        help="also check that --precision gives the same top-1 as fp32 on the images in FOLDER "
        "(macro-F1 too when its sub-folders are the model's labels); without FOLDER: 256 crops "
        "of the bundled real photos",
    )
    group.add_argument(
        "--write-md",
        metavar="PATH",
        nargs="?",
        const="BENCHMARKS.md",
        default=None,
        help="write the tables into the 'Model forward' (or 'GPU') section of PATH (default BENCHMARKS.md)",
    )


def run(args: argparse.Namespace) -> int:
    # torch and the model code load here, not at `vitkit --help` time
    import torch

    from vitkit.bench import agreement
    from vitkit.bench import engine as bench
    from vitkit.inference import runtime

    runtime.check_precision(args.precision, args.device, force=args.force)
    if args.cpu_time:
        args.threads = 1  # one thread does all the work, so its CPU time is the work
    against = (
        [] if args.against == "none" else [p.strip() for p in args.against.split(",") if p.strip()]
    )
    model, processor_config = bench.load_bench_model(args.model, args.image_size)
    device = torch.device(args.device)
    runtime.tune_process_for_inference(device)
    contenders = bench.forward_contenders(
        model,
        precision=args.precision,
        against=against,
        compile=args.compile,
        device=device,
        log=_log,
    )
    info = bench.machine_info(device)
    command = "vitkit " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    for batch_size in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        report = _timed_rounds(args, contenders, model, device, batch_size)
        text = bench.report_markdown(report, info | {"run end load": _load()}, command)
        print(text)
        if args.write_md:
            _write_block(args, device, batch_size, text)
    if args.agreement:
        print(agreement.agreement_text(model, args.agreement, args.precision, processor_config))
    return 0


def _timed_rounds(
    args: argparse.Namespace, contenders: Any, model: Any, device: Any, batch_size: int
) -> Any:
    """The interleaved rounds of every contender on one batch of real photos."""
    import time

    import torch

    from vitkit.bench import engine as bench
    from vitkit.inference import runtime

    threads = bench.pick_threads(args.threads, batch_size, model, device)
    with runtime.num_threads(threads):
        batch = bench.photo_batch(batch_size, model.config.image_hw).to(device)
        return bench.run_interleaved(
            contenders,
            batch,
            rounds=args.rounds,
            repeats=args.repeats,
            warmup=args.warmup,
            device=device,
            probe_dtype=runtime.DTYPES.get(args.precision, torch.float32),
            probe_seconds=args.probe_seconds,
            measure_memory=not args.no_memory,
            title=f"{args.model} {args.precision}",
            log=_log,
            clock=time.process_time if args.cpu_time else time.perf_counter,
        )


def _write_block(args: argparse.Namespace, device: Any, batch_size: int, text: str) -> None:
    """The table into its own block of the 'Model forward' (CPU) or 'GPU' section."""
    from vitkit.bench import engine as bench

    section = "GPU" if device.type == "cuda" else "Model forward"
    key = (
        f"{args.model}-{args.precision}-b{batch_size}-{device.type}"
        + ("-compile" if args.compile else "")
        + ("-cputime" if args.cpu_time else "")
    )
    bench.write_markdown_block(args.write_md, section, key, text)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load() -> str:
    try:
        with open("/proc/loadavg") as loadavg:
            return " ".join(loadavg.read().split()[:3])
    except OSError:
        return "n/a"
