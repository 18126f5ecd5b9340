"""`make demo` cost: wall time and peak memory of `python -m vitkit demo`, plus its test metrics.

Usage: python benchmarks/bench_train_demo.py [--cores 0,1] [--device cpu|cuda] [-- extra demo args]

``--cores`` pins the run to those CPU cores (taskset), to emulate a 2-core machine on a bigger one.
Prints one Markdown table row per run, with the machine and versions, for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time


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
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{cores} cores of {cpu}"
    )
    print("| device | wall (s) | peak RSS (MiB) | test macro-F1 | minority recall | torch |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {device} | {wall:.1f} | {peak_mib:.0f} | {macro.group(3) if macro else '?'} | "
        f"{minority.group(2) if minority else '?'} | {torch.__version__} |"
    )
    print(f"\n(load average during the run: {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d')})")


if __name__ == "__main__":
    main()
