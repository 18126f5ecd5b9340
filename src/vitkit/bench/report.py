"""Benchmark reports: the machine a number was taken on, the markdown table of a timing
report, and the block that puts it into BENCHMARKS.md between markers."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
from pathlib import Path

import torch

from vitkit.atomic_files import atomic_write_text
from vitkit.bench.timing import Report


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
