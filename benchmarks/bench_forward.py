"""CPU forward pass, ViT-B/16-224: the tables of BENCHMARKS.md's "Model forward" section.

1. fp32 at batch 1 and 8: vitkit vs transformers (sdpa) vs timm vs onnxruntime, same weights
   (``vitkit bench``, which this calls).
2. int8 at batch 8: vitkit int8 vs vitkit fp32, transformers/timm with the same dynamic
   quantization (--int8-against), onnxruntime int8.
3. CPU time (--only cputime): the fp32 and int8 tables again on one thread, timed by that
   thread's CPU time, which other processes on a shared machine cannot inflate.
4. Threads: vitkit fp32 with 1 and with 2 threads, interleaved, at batch 1 and 8 (what
   ``runtime.choose_threads`` is tuned on), and at batch 8 two sub-batches on one thread each
   (``vitkit.inference.core_split``, what the runtime does with 2 threads and >= 4 images).

    .venv/bin/python benchmarks/bench_forward.py --rounds 7 --write
    .venv/bin/python benchmarks/bench_forward.py --only threads --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch

from vitkit.bench import engine as bench
from vitkit.bench.engine import load_bench_model
from vitkit.cli import main as vitkit_main
from vitkit.inference import runtime
from vitkit.inference.core_split import CoreSplit


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def thread_sweep(model_name: str, rounds: int, write: bool) -> None:
    model, _ = load_bench_model(model_name, None)
    fast = runtime.optimize(model, threads=None)
    flops = bench.logits_path_flops(model)
    info = bench.machine_info("cpu")
    for batch_size in (1, 8):

        def with_threads(count: int) -> bench.Forward:
            def forward(pixels: torch.Tensor) -> torch.Tensor:
                with runtime.num_threads(count):
                    return fast(pixels)

            return forward

        contenders = [
            bench.Contender(f"vitkit, {n} thread{'s' if n > 1 else ''}", with_threads(n), flops)
            for n in (1, 2)
        ]
        if batch_size >= 4:  # what runtime picks for >= 2 images per thread (core_split)
            split = CoreSplit(2)
            contenders.append(
                bench.Contender(
                    "vitkit, 2 sub-batches x 1 thread",
                    functools.partial(split, fast.logits_fn),
                    flops,
                )
            )
        batch = bench.photo_batch(batch_size, model.config.image_hw)
        report = bench.run_interleaved(
            contenders,
            batch,
            rounds=rounds,
            repeats=2,
            measure_memory=False,
            title=f"{model_name} fp32 threads",
            log=log,
        )
        auto = runtime.choose_threads(batch_size, flops, cores=runtime.usable_cores())
        text = bench.report_markdown(
            report,
            info,
            f"python benchmarks/bench_forward.py --only threads --rounds {rounds}",
        )
        text = text.replace(
            "| contender |",
            f"On a quiet machine `runtime.choose_threads` picks {auto} thread(s) here; it picks 1 "
            "whenever another task is running.\n\n| contender |",
            1,
        )
        print(text)
        if write:
            bench.write_markdown_block(
                "BENCHMARKS.md", "Model forward", f"threads-b{batch_size}", text
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit-base-patch16-224")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", default="2", help="for the fp32/int8 tables (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per round (default 1)")
    parser.add_argument("--int8-against", default="transformers,timm,onnx")
    parser.add_argument("--only", default="fp32,int8,threads")
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md 'Model forward'")
    args = parser.parse_args()
    parts = args.only.split(",")
    common = ["--model", args.model, "--rounds", str(args.rounds), "--threads", args.threads]
    common += ["--repeats", str(args.repeats)]
    if args.write:
        common.append("--write-md")
    if "fp32" in parts:
        vitkit_main(
            ["bench", *common, "--batch-sizes", "1,8", "--against", "transformers,timm,onnx"]
        )
    if "int8" in parts:
        vitkit_main(
            [
                "bench",
                *common,
                "--precision",
                "int8",
                "--batch-sizes",
                "8",
                "--against",
                args.int8_against,
            ]
        )
    if "cputime" in parts:  # one thread, CPU time: the comparison a busy machine cannot skew
        base = ["--model", args.model, "--rounds", str(args.rounds), "--cpu-time", "--no-memory"]
        base += ["--repeats", str(args.repeats)] + (["--write-md"] if args.write else [])
        vitkit_main(["bench", *base, "--batch-sizes", "8", "--against", "transformers,timm,onnx"])
        vitkit_main(
            ["bench", *base, "--batch-sizes", "8", "--precision", "int8", "--against", "onnx"]
        )
    if "threads" in parts:
        thread_sweep(args.model, args.rounds, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
