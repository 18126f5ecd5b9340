"""CPU forward pass, ViT-B/16-224, vitkit against its peers: benchmarks/results/forward_cpu_*.json.

1. fp32 at batch 1 and 8: vitkit vs transformers (sdpa) vs timm vs onnxruntime, same weights
   (``vitkit bench``, which this calls).
2. int8 at batch 8: vitkit int8 vs vitkit fp32, transformers/timm with the same dynamic
   quantization (--int8-against), onnxruntime int8.
3. CPU time (--only cputime): the fp32 and int8 tables again on one thread, timed by that
   thread's CPU time, which other processes on a shared machine cannot inflate.
4. Threads: vitkit fp32 with 1 and with 2 threads, interleaved, at batch 1 and 8 (what
   ``runtime.choose_threads`` is tuned on), and at batch 8 two sub-batches on one thread each
   (``vitkit.inference.core_split``, what the runtime does with 2 threads and >= 4 images).

    .venv/bin/python benchmarks/bench_forward.py --rounds 7
    .venv/bin/python benchmarks/bench_forward.py --only threads --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch

from results_io import write_report
from vitkit.bench.contenders import forward_contenders, load_bench_model, logits_path_flops
from vitkit.bench.memory import Forward
from vitkit.bench.sample_data import photo_batch
from vitkit.bench.timing import Contender, Report, run_interleaved
from vitkit.inference import runtime
from vitkit.inference.core_split import CoreSplit


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def thread_sweep(model_name: str, rounds: int) -> None:
    model, _ = load_bench_model(model_name, None)
    fast = runtime.optimize(model, threads=None)
    flops = logits_path_flops(model)
    for batch_size in (1, 8):

        def with_threads(count: int) -> Forward:
            def forward(pixels: torch.Tensor) -> torch.Tensor:
                with runtime.num_threads(count):
                    return fast(pixels)

            return forward

        contenders = [
            Contender(f"vitkit, {n} thread{'s' if n > 1 else ''}", with_threads(n), flops)
            for n in (1, 2)
        ]
        if batch_size >= 4:  # what runtime picks for >= 2 images per thread (core_split)
            split = CoreSplit(2)
            contenders.append(
                Contender(
                    "vitkit, 2 sub-batches x 1 thread",
                    functools.partial(split, fast.logits_fn),
                    flops,
                )
            )
        batch = photo_batch(batch_size, model.config.image_hw)
        report = run_interleaved(
            contenders,
            batch,
            rounds=rounds,
            repeats=2,
            measure_memory=False,
            title=f"{model_name} fp32 threads",
            log=log,
        )
        auto = runtime.choose_threads(batch_size, flops, cores=runtime.usable_cores())
        publish(
            f"forward_cpu_threads_b{batch_size}",
            f"CPU forward, {model_name} fp32, batch {batch_size}: 1 thread, 2 threads, 2 sub-batches",
            report,
            base="vitkit, 1 thread",
            notes=f"On a quiet machine `runtime.choose_threads` picks {auto} thread(s) here; it "
            "picks 1 whenever another task is running.",
        )


def publish(name: str, title: str, report: Report, base: str, notes: str = "") -> None:
    """benchmarks/results/NAME.json from one interleaved report."""
    extra = {"threads": torch.get_num_threads()}
    print(
        f"wrote {write_report(name, title=title, report=report, base=base, notes=notes, extra=extra)}"
    )


def peers_rounds(
    model_name: str,
    precision: str,
    against: list[str],
    batch_sizes: list[int],
    args: argparse.Namespace,
) -> None:
    """vitkit against its peers on the same weights, one results file per batch size."""
    model, _ = load_bench_model(model_name, None)
    contenders = forward_contenders(
        model, precision=precision, against=against, device=torch.device("cpu"), log=log
    )
    clock = time.process_time if args.cpu_time else time.perf_counter
    threads = 1 if args.cpu_time else int(args.threads)
    for batch_size in batch_sizes:
        with runtime.num_threads(threads):
            batch = photo_batch(batch_size, model.config.image_hw)
            report = run_interleaved(
                contenders,
                batch,
                rounds=args.rounds,
                repeats=args.repeats,
                measure_memory=not args.cpu_time,
                title=f"{model_name} {precision}",
                log=log,
                clock=clock,
            )
        timing = "CPU time of one thread" if args.cpu_time else f"wall clock, {threads} threads"
        suffix = "_cputime" if args.cpu_time else ""
        publish(
            f"forward_cpu_{precision}_b{batch_size}{suffix}",
            f"CPU forward, {model_name} {precision}, batch {batch_size} ({timing})",
            report,
            base=contenders[0].name,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit-base-patch16-224")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", default="2", help="for the fp32/int8 tables (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per round (default 1)")
    parser.add_argument("--int8-against", default="transformers,timm,onnx")
    parser.add_argument("--only", default="fp32,int8,threads")
    args = parser.parse_args()
    parts = args.only.split(",")
    runtime.tune_process_for_inference(torch.device("cpu"))
    args.cpu_time = False
    if "fp32" in parts:
        peers_rounds(args.model, "fp32", ["transformers", "timm", "onnx"], [1, 8], args)
    if "int8" in parts:
        peers_rounds(args.model, "int8", args.int8_against.split(","), [8], args)
    if "cputime" in parts:  # one thread, CPU time: the comparison a busy machine cannot skew
        args.cpu_time = True
        peers_rounds(args.model, "fp32", ["transformers", "timm", "onnx"], [8], args)
    if "threads" in parts:
        thread_sweep(args.model, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
