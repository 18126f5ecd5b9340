"""`make demo` cost: wall time and peak memory of `python -m vitkit demo`, plus its test metrics.

Usage: python benchmarks/bench_train_demo.py [--cores 0,1] [--device cpu|cuda] [-- extra demo args]

``--cores`` pins the run to those CPU cores (taskset), to emulate a 2-core machine on a bigger one.
Writes benchmarks/results/train_demo.json.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from results_io import write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default=None, help="comma-separated CPU ids to pin to")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("extra", nargs="*", help="extra `vitkit demo` arguments")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "vitkit", "demo", "--out", out, "--device", args.device]
        command += ["--no-progress", *args.extra]
        if args.cores:
            command = ["taskset", "-c", args.cores, *command]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    macro = re.search(r"macro avg\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", done.stdout)
    minority = re.search(r"minority class '(\w+)': recall ([\d.]+)", done.stdout)
    cores = len(args.cores.split(",")) if args.cores else os.cpu_count()
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cores} CPU cores"
    )
    f1 = float(macro.group(3)) if macro else None
    recall = float(minority.group(2)) if minority else None
    path = write_results(
        "train_demo",
        title="`make demo`: time, memory and test metrics",
        command="python benchmarks/bench_train_demo.py " + " ".join(sys.argv[1:]),
        summary={
            "wall_s": wall,
            "peak_rss_mib": peak_mib,
            "macro_f1": f1,
            "minority_recall": recall,
        },
        rounds=[{"wall_s": wall, "peak_rss_mib": peak_mib, "output": done.stdout[-4000:]}],
        table={
            "columns": ["device", "wall s", "peak RSS MiB", "test macro-F1", "minority recall"],
            "rows": [[device, f"{wall:.1f}", f"{peak_mib:.0f}", f1, recall]],
        },
        notes="One run of `python -m vitkit demo` as a user starts it (a single run: no spread).",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
