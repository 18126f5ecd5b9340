"""`vitkit bench`: vitkit's forward pass side by side with transformers and timm, same weights."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from vitkit.bench.settings import BenchSettings
from vitkit.cli._options import add_options, config_from_args

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
    add_options(parser, BenchSettings)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> BenchSettings:
    return config_from_args(BenchSettings, args).timed_threads()


def run(args: argparse.Namespace) -> int:
    # torch and the model code load here, not at `vitkit --help` time
    import torch

    from vitkit.bench import agreement
    from vitkit.bench.contenders import forward_contenders, load_bench_model
    from vitkit.bench.report import machine_info, report_markdown
    from vitkit.inference import runtime

    chosen = settings(args)
    runtime.check_precision(chosen.precision, chosen.device, force=chosen.force)
    model, processor_config = load_bench_model(chosen.model, chosen.image_size)
    device = torch.device(chosen.device)
    runtime.tune_process_for_inference(device)
    contenders = forward_contenders(
        model,
        precision=chosen.precision,
        against=chosen.peers,
        compile=chosen.compile,
        device=device,
        log=_log,
    )
    info = machine_info(device)
    command = "vitkit " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    for batch_size in chosen.batch_sizes:
        report = _timed_rounds(chosen, contenders, model, device, batch_size)
        text = report_markdown(report, info | {"run end load": _load()}, command)
        print(text)
        if chosen.write_md:
            _write_block(chosen.write_md, chosen, device, batch_size, text)
    if chosen.agreement:
        print(agreement.agreement_text(model, chosen.agreement, chosen.precision, processor_config))
    return 0


def _timed_rounds(
    chosen: BenchSettings, contenders: Any, model: Any, device: Any, batch_size: int
) -> Any:
    """The interleaved rounds of every contender on one batch of real photos."""
    import torch

    from vitkit.bench.contenders import pick_threads
    from vitkit.bench.sample_data import photo_batch
    from vitkit.bench.timing import run_interleaved
    from vitkit.inference import runtime

    threads = pick_threads(chosen.threads, batch_size, model, device)
    with runtime.num_threads(threads):
        batch = photo_batch(batch_size, model.config.image_hw).to(device)
        return run_interleaved(
            contenders,
            batch,
            rounds=chosen.rounds,
            repeats=chosen.repeats,
            warmup=chosen.warmup,
            device=device,
            probe_dtype=runtime.DTYPES.get(chosen.precision, torch.float32),
            probe_seconds=chosen.probe_seconds,
            measure_memory=chosen.memory,
            title=f"{chosen.model} {chosen.precision}",
            log=_log,
            clock=time.process_time if chosen.cpu_time else time.perf_counter,
        )


def _write_block(path: str, chosen: BenchSettings, device: Any, batch_size: int, text: str) -> None:
    """The table into its own block of the 'Model forward' (CPU) or 'GPU' section of ``path``."""
    from vitkit.bench.report import write_markdown_block

    section = "GPU" if device.type == "cuda" else "Model forward"
    key = (
        f"{chosen.model}-{chosen.precision}-b{batch_size}-{device.type}"
        + ("-compile" if chosen.compile else "")
        + ("-cputime" if chosen.cpu_time else "")
    )
    write_markdown_block(path, section, key, text)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load() -> str:
    try:
        with open("/proc/loadavg") as loadavg:
            return " ".join(loadavg.read().split()[:3])
    except OSError:
        return "n/a"
