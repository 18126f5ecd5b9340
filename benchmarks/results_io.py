"""One results file per benchmark: what ``BENCHMARKS.md`` and the README's figures are made of.

The contract (every script under ``benchmarks/`` keeps it)
-----------------------------------------------------------
A benchmark script ends with one call::

    from results_io import median_spread, write_results

    write_results(
        "ray_overhead",                       # -> benchmarks/results/ray_overhead.json
        title="Ray Data overhead over the local engine",
        command=" ".join(sys.argv),           # how to run it again (the default does this)
        summary={"ratio_median": 1.04, "ratio_min": 0.98, "ratio_max": 1.09, "rounds": 9},
        rounds=[{"round": 0, "local_s": 12.1, "ray_s": 12.6}, ...],   # every raw value
        table={"columns": ["engine", "images/s (median, min-max)"],
               "rows": [["local", median_spread([41.2, 40.9, 42.0])], ...]},
        notes="One sentence a reader needs to judge the numbers (data used, what is compared).",
        extra={"images": 256},                # anything else worth keeping (settings, sizes)
    )

- ``name`` is the file's stem: lower case, digits and ``_`` only; one file per benchmark (a
  script that measures several things writes several names).
- ``summary`` holds the headline numbers (JSON scalars, or ``spread()`` dicts: median, min,
  max, rounds); the README's figures table
  reads from it, so keep its keys stable.
- ``rounds`` holds every round's raw values, never only the median: a reader must be able to
  recompute the summary. State the number of rounds in the summary or the table.
- ``table`` (``{"columns": [...], "rows": [[...], ...]}``, cells are strings or numbers) is what
  ``scripts/render_benchmarks.py`` prints under the title. Put the spread beside every median
  (``median_spread``); claim a goal met only when the whole spread clears it (``goal_verdict``).
- ``notes`` is markdown shown under the table; the machine and date come from the file itself,
  never from prose.
- The load average is read when this module is imported (import it at the top of the script,
  not inside the function that writes, or call ``mark_start()``) and again inside
  ``write_results``: a timing taken while the machine was busy shows it.
- ``write_report`` is ``write_results`` for an interleaved ``vitkit.bench`` report.
- ``VITKIT_RESULTS_DIR=/tmp/x`` sends a smoke run's file elsewhere.

A results file without a ``table`` needs its own renderer in ``scripts/render_benchmarks.py``
(the render check fails on a file it cannot render). After writing a results file, run
``python scripts/render_benchmarks.py`` and commit the results file with the new BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# VITKIT_RESULTS_DIR points a smoke run elsewhere (the committed files stay as they are).
RESULTS_DIR = Path(os.environ.get("VITKIT_RESULTS_DIR") or REPO_ROOT / "benchmarks" / "results")

# Distribution names whose versions a reader may need to judge a figure; absent ones are skipped.
LIBRARIES = (
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "simplejpeg",
    "transformers",
    "timm",
    "onnxruntime",
    "ray",
    "pyarrow",
    "fastapi",
    "uvicorn",
    "openslide-python",
    "tifffile",
    "scikit-learn",
    "segmentation-models-pytorch",
    "torchmetrics",
)

_NAME = re.compile(r"^[a-z0-9_]+$")


def _load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


_load_at_start = _load_average()


def mark_start() -> None:
    """Read the load average now as the "before" figure (import time is the default)."""
    global _load_at_start
    _load_at_start = _load_average()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for distribution in (*LIBRARIES, "vitkit"):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _gpu() -> str | None:
    """The CUDA device's name, asked only when the benchmark already imported torch."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def git_commit() -> str:
    """HEAD's commit, with ``+dirty`` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return f"{commit}+dirty" if dirty else commit


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: CPU, cores, memory, load, versions, commit, date."""
    cores_usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": cores_usable,
        "memory_gib": _memory_gib(),
        "load_average_before": _load_at_start,
        "load_average_now": _load_average(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "nice": os.nice(0),  # a niced run yields the cores to others: its timings say less
        "versions": _versions(),
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    gpu = _gpu()
    if gpu is not None:
        info["gpu"] = gpu
    return info


def _check_table(table: dict[str, Any]) -> None:
    columns = table.get("columns")
    rows = table.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ValueError('table must be {"columns": [...], "rows": [[...], ...]}')
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"table row {row!r} has {len(row)} cells for {len(columns)} columns")


def write_results(
    name: str,
    *,
    title: str,
    command: str | None = None,
    summary: dict[str, Any],
    rounds: Sequence[Any],
    table: dict[str, Any] | None = None,
    notes: str = "",
    extra: dict[str, Any] | None = None,
    results_dir: Path | None = None,
) -> Path:
    """Write ``benchmarks/results/<name>.json`` (atomically) and return its path.

    ``command`` defaults to this process's command line; ``results_dir`` is for tests.
    """
    if not _NAME.match(name):
        raise ValueError(f"results name {name!r}: use lower case letters, digits and '_' only")
    if table is not None:
        _check_table(table)
    machine = machine_info()
    machine["load_average_after"] = machine.pop("load_average_now")
    record = {
        "name": name,
        "title": title,
        "command": command if command is not None else _command_line(),
        "date": machine["date"],
        "git_commit": machine["git_commit"],
        "machine": machine,
        "summary": summary,
        "rounds": list(rounds),
        "table": table,
        "notes": notes,
        "extra": extra or {},
    }
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def _command_line() -> str:
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO_ROOT)
    return " ".join(["python", str(script), *sys.argv[1:]])


def read_results(name: str, results_dir: Path | None = None) -> dict[str, Any]:
    """A results file as written by ``write_results``."""
    path = (results_dir or RESULTS_DIR) / f"{name}.json"
    return dict(json.loads(path.read_text(encoding="utf-8")))


# ---- summaries every script writes the same way -------------------------------------------------
def spread(values: Iterable[float]) -> dict[str, float | int]:
    """Median, min, max and the number of rounds of one measured quantity."""
    data = [float(value) for value in values]
    if not data:
        raise ValueError("no rounds to summarise")
    return {
        "median": statistics.median(data),
        "min": min(data),
        "max": max(data),
        "rounds": len(data),
    }


def median_spread(values: Iterable[float], digits: int = 2, unit: str = "") -> str:
    """``"1.57x (1.50-1.62)"``: the median with the range of the rounds beside it."""
    stats = spread(values)
    if stats["rounds"] == 1:
        return f"{stats['median']:.{digits}f}{unit} (1 round)"
    return (
        f"{stats['median']:.{digits}f}{unit} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
    )


def goal_verdict(values: Iterable[float], goal: float, higher_is_better: bool = True) -> str:
    """``"met"`` only when every round clears ``goal``, ``"missed"`` when none does, and
    ``"inconclusive"`` when the spread of the rounds crosses it."""
    stats = spread(values)
    low, high = stats["min"], stats["max"]
    if not higher_is_better:
        low, high, goal = -high, -low, -goal
    if low >= goal:
        return "met"
    if high < goal:
        return "missed"
    return "inconclusive"


def interleaved_table(results: Sequence[Any], base: str) -> dict[str, Any]:
    """The table of one interleaved forward benchmark (``vitkit.bench.timing.Report.results``,
    or the same fields as dicts): images/s per contender, median and range over rounds, and its
    time over ``base``'s in each round (> 1: ``base`` is faster)."""

    def field(result: Any, name: str) -> Any:
        return result[name] if isinstance(result, dict) else getattr(result, name)

    base_seconds = next(field(r, "round_seconds") for r in results if field(r, "name") == base)
    rows = []
    for result in results:
        seconds, batch = field(result, "round_seconds"), field(result, "batch_size")
        peak = field(result, "peak_bytes")
        times_base = [mine / theirs for mine, theirs in zip(seconds, base_seconds, strict=True)]
        rows.append(
            [
                field(result, "name")
                + (f" ({field(result, 'note')})" if field(result, "note") else ""),
                median_spread([batch / s for s in seconds], digits=1),
                "n/a" if peak is None else f"{peak / 2**20:.0f}",
                "—" if field(result, "name") == base else median_spread(times_base) + "x",
            ]
        )
    columns = ["contender", "images/s (median, min-max)", "peak MB", f"time over {base}'s"]
    return {"columns": columns, "rows": rows}


def write_report(
    name: str, *, title: str, report: Any, base: str, notes: str = "", extra: dict | None = None
) -> Path:
    """``write_results`` for one ``vitkit.bench.timing.Report`` (interleaved forward rounds):
    every round of every contender, images/s spreads in the summary, ``interleaved_table``."""
    results = report.results
    gemm = getattr(report, "gemm_gflops", None) or []
    probe = (
        f" A matmul probe ran in the same rounds at {spread(gemm)['min']:.0f}-"
        f"{spread(gemm)['max']:.0f} GFLOP/s."
        if gemm
        else ""
    )
    return write_results(
        name,
        title=title,
        summary={r.name: spread([r.batch_size / s for s in r.round_seconds]) for r in results},
        rounds=[
            {
                "contender": r.name,
                "note": r.note,
                "batch_size": r.batch_size,
                "round_seconds": r.round_seconds,
                "flops_per_image": r.flops_per_image,
                "peak_bytes": r.peak_bytes,
                "weight_bytes": r.weight_bytes,
            }
            for r in results
        ],
        table=interleaved_table(results, base),
        notes=(
            f"{len(results[0].round_seconds)} interleaved rounds in one process: the contenders "
            "on the same weights and inputs, the order turned each round; a round's figure is "
            f"the median of its timed calls.{probe}" + (f" {notes}" if notes else "")
        ),
        extra={"gemm_gflops": list(gemm), **(extra or {})},
    )
