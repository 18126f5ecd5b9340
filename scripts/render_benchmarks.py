"""Render BENCHMARKS.md, the README's figures table and the results tables docs pages mark
from ``benchmarks/results/*.json``.

    python scripts/render_benchmarks.py           # rewrite BENCHMARKS.md, README's table, docs tables
    python scripts/render_benchmarks.py --check   # exit 1 when one differs from a fresh render

Every file under ``benchmarks/results/`` is a results file written by
``benchmarks/results_io.write_results`` (its docstring is the contract) and gets one section.
A file with a ``table`` is rendered by the generic renderer; a file that needs more (several
tables, a picture) names a renderer in ``RENDERERS``. A file this script cannot render is an
error, so is any other file in that folder: every published figure comes from a results file,
and deleting one changes the render, which the check (run by the tests) reports.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
README = ROOT / "README.md"
DOCS_DIR = ROOT / "docs"
FIGURES_BEGIN = "<!-- figures:begin (scripts/render_benchmarks.py writes this table) -->"
FIGURES_END = "<!-- figures:end -->"

Record = dict[str, Any]

# Sections appear in this order; results not named here follow, sorted by name.
ORDER = (
    "forward_cpu",
    "commands",
    "end_to_end",
    "preprocess",
    "dinov2_embedding",
    "serve_load",
    "serve_hostile",
    "serve_vs_script",
    "explain",
    "train_demo",
    "train_vs_timm",
    "label_scarcity",
    "multilabel",
    "compare_multilabel",
    "tta",
    "slides",
    "ray_overhead",
    "gpu_h100_run2",
    "gpu_h100_run1",
)


class RenderError(Exception):
    """A results file that cannot be rendered (the message names it and the fix)."""


# ---- loading --------------------------------------------------------------------------------------
def load_results(results_dir: Path) -> list[Record]:
    """Every results file, in section order; anything else in the folder is an error."""
    records = []
    for path in sorted(results_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix != ".json":
            raise RenderError(
                f"{path}: not a results file; write it with benchmarks/results_io.write_results"
            )
        record = json.loads(path.read_text(encoding="utf-8"))
        for key in ("name", "title", "command", "summary", "rounds", "machine"):
            if key not in record:
                raise RenderError(
                    f"{path}: no {key!r}; write it with benchmarks/results_io.write_results"
                )
        if record["name"] != path.stem:
            raise RenderError(f"{path}: its name is {record['name']!r}; rename one to match")
        records.append(record)
    rank = {name: index for index, name in enumerate(ORDER)}
    return sorted(
        records, key=lambda record: (rank.get(record["name"], len(ORDER)), record["name"])
    )


# ---- pieces every section uses --------------------------------------------------------------------
def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Record) -> str:
    columns = table["columns"]
    lines = [
        "| " + " | ".join(cell(column) for column in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table["rows"]]
    return "\n".join(lines)


LOADS = ("load_average_before", "load_average_after")


def _load_text(values: Any) -> str:
    return "n/a" if not values else f"{values[0]:.1f}"


def cores_of(record: Record) -> int:
    machine = record["machine"]
    return int(machine.get("cores_usable") or machine.get("cores") or 0)


def was_busy(record: Record) -> bool:
    """The 1-minute load average, before or after, above the cores the run could use."""
    machine = record["machine"]
    loads = [values[0] for values in (machine.get(k) for k in LOADS) if values]
    return bool(loads) and cores_of(record) > 0 and max(loads) > cores_of(record)


def machine_line(record: Record) -> str:
    """Where and when: CPU, cores, memory, GPU, load before/after, versions, commit."""
    machine = record["machine"]
    versions = machine.get("versions", {})
    shown = [
        f"{package} {versions[package]}"
        for package in ("python", "torch", "transformers", "timm", "ray")
        if package in versions
    ]
    hardware = f"{machine.get('cpu_model', 'unknown CPU')}, {machine.get('cores_usable') or machine.get('cores')} cores"
    if machine.get("memory_gib"):
        hardware += f", {machine['memory_gib']:.0f} GiB"
    if machine.get("gpu"):
        hardware += f", {machine['gpu']}"
    commit = str(record.get("git_commit", "unknown"))
    busy = (
        f" **The load exceeded the {cores_of(record)} cores: timings from this run need a quiet "
        "re-run.**"
        if was_busy(record)
        else ""
    )
    return (
        f"Measured {str(record.get('date', 'n/a')).replace('T', ' ')} on {hardware}; 1-minute load average "
        f"{_load_text(machine.get('load_average_before'))} before, "
        f"{_load_text(machine.get('load_average_after'))} after; {', '.join(shown)}; "
        f"commit `{commit[:10]}{'+dirty' if commit.endswith('+dirty') else ''}`.{busy}"
    )


def footer(record: Record) -> str:
    name = record["name"]
    return (
        f"{machine_line(record)}\n"
        f"Command: `{record['command']}`. Every round: "
        f"[`benchmarks/results/{name}.json`](benchmarks/results/{name}.json)."
    )


def generic_section(record: Record) -> str:
    """Title, table, notes, machine: the section of any results file that carries a table."""
    if not record.get("table"):
        raise RenderError(
            f"benchmarks/results/{record['name']}.json has no table: add one in write_results "
            "or a renderer in scripts/render_benchmarks.py RENDERERS"
        )
    parts = [markdown_table(record["table"])]
    if record.get("notes"):
        parts.append(record["notes"].strip())
    return "\n\n".join(parts)


# Results that need more than one table: name -> body renderer (the footer is added for all).
RENDERERS: dict[str, Callable[[Record], str]] = {}


def section(record: Record) -> str:
    body = RENDERERS.get(record["name"], generic_section)(record)
    return f"## {record['title']}\n\n{body}\n\n{footer(record)}\n"


# ---- the two documents ----------------------------------------------------------------------------
BENCHMARKS_HEADER = """# Benchmarks

Every figure below is rendered by `scripts/render_benchmarks.py` from one results file under
`benchmarks/results/`, written by the benchmark script named in its command line; the file also
holds every round's raw values, the machine, its load average before and after the run, the
library versions and the commit. Do not edit this file by hand: run the benchmark, then
`python scripts/render_benchmarks.py`. Medians come with the range of the rounds beside them;
a goal is called met only when every round clears it.
"""


def render_benchmarks(records: list[Record]) -> str:
    contents = [f"- [{record['title']}](#{anchor(record['title'])})" for record in records]
    parts = [BENCHMARKS_HEADER, "\n".join(contents) + "\n"]
    parts += [section(record) for record in records]
    return "\n".join(parts)


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    kept = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def spread_text(stats: Record, digits: int = 2, unit: str = "") -> str:
    """A ``results_io.spread`` dict as "median (min-max, N rounds)"."""
    low, high = f"{stats['min']:.{digits}f}", f"{stats['max']:.{digits}f}"
    return f"{stats['median']:.{digits}f}{unit} ({low}-{high}, {stats['rounds']} rounds)"


def _gpu_figure(record: Record) -> str:
    summary = record["summary"]
    return (
        f"{spread_text(summary['vitkit compile:default'], 0)} images/s compiled; timm compiled "
        f"{spread_text(summary['timm compile:default'], 0)}"
    )


def _slides_figure(record: Record) -> str:
    summary = record["summary"]
    return (
        f"`vitkit slide` {spread_text(summary['vitkit_ratio'])} x the model alone; "
        f"WSInfer-style reading {spread_text(summary['naive_ratio'])} x"
    )


def _ratio_rounds(record: Record, mine: str, theirs: str) -> Record:
    """Spread of theirs / mine time per round, from an interleaved forward record's rounds."""
    seconds = {r["contender"]: r["round_seconds"] for r in record["rounds"]}
    ratios = [t / m for m, t in zip(seconds[mine], seconds[theirs], strict=True)]
    ordered = sorted(ratios)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1], "rounds": len(ratios)}


def _forward_figure(record: Record) -> str:
    names = [r["contender"] for r in record["rounds"]]
    peers = [n for n in names[1:] if n.split()[0] in ("transformers-sdpa", "timm")]
    return "; ".join(
        f"{spread_text(_ratio_rounds(record, names[0], peer))}x {peer}" for peer in peers
    )


def _commands_figure(task: str) -> Callable[[Record], str]:
    def read(record: Record) -> str:
        speedups = record["summary"]["speedups"]
        shown = [
            f"{job.split(':')[0].split(', ')[1]}: {spread_text(value)}x {value['against']}"
            for job, value in speedups.items()
            if job.startswith(f"`{task}`") and job.endswith(f"vitkit {task} fp32")
        ]
        return "; ".join(shown)

    return read


def _train_figure(record: Record) -> str:
    images = record["summary"]["images"]
    return (
        f"{spread_text(record['summary']['speed_vs_timm'])}x timm's `train.py`, both on "
        f"{images['train']} train / {images['validation']} validation images"
    )


def _ray_figure(record: Record) -> str:
    shown = [
        f"{name}: {spread_text(value['ratio'])}x one process ({value['verdict']})"
        if value["ratio"]
        else f"{name}: unmeasurable on this machine (inconclusive)"
        for name, value in record["summary"].items()
        if name.startswith("ray")
    ]
    return "; ".join(shown)


def _preprocess_figure(record: Record) -> str:
    fast = record["summary"]["vitkit fast"]
    return (
        f"exact `fast` mode {spread_text(fast['vs_default_paths'])}x transformers' default "
        f"processor, {spread_text(fast['vs_pil_backend'])}x its PIL backend (one core)"
    )


def _scarcity_figure(record: Record) -> str:
    return (
        f"MAE then fine-tuning minus scratch, test macro-F1 at 10% of the labels: "
        f"{spread_text(record['summary']['gain_at_10%'], 3)}"
    )


# README's figures: (results name, what it shows, how to read the figure off the record).
ReadmeFigure = tuple[str, str, Callable[[Record], str]]
README_FIGURES: list[ReadmeFigure] = [
    (
        "forward_cpu_fp32_b8",
        "CPU forward, ViT-B/16 fp32, batch 8, time over vitkit's",
        _forward_figure,
    ),
    (
        "commands",
        "whole `vitkit predict` process against the best peer script",
        _commands_figure("predict"),
    ),
    (
        "commands",
        "whole `vitkit embed` process against the best peer script",
        _commands_figure("embed"),
    ),
    ("preprocess", "preprocessing, 640x480 JPEGs", _preprocess_figure),
    ("train_vs_timm", "`vitkit train` against timm's `train.py`, same folders", _train_figure),
    ("ray_overhead", "`--engine ray` against one process on as many cores", _ray_figure),
    ("label_scarcity", "label scarcity (Fashion-MNIST)", _scarcity_figure),
    ("gpu_h100_run2", "H100, ViT-B/16-224 bf16, batch 256", _gpu_figure),
    ("slides", "whole slide, 40k x 40k JPEG-tiled TIFF, ViT-Ti, 2 CPU cores", _slides_figure),
]


def render_readme_figures(records: list[Record]) -> str:
    by_name = {record["name"]: record for record in records}
    rows = ["| figure | value | results file |", "|---|---|---|"]
    for name, label, read in README_FIGURES:
        if name not in by_name:
            continue
        busy = " (a busy machine: needs a quiet re-run)" if was_busy(by_name[name]) else ""
        rows.append(
            f"| {label} | {read(by_name[name])}{busy} | "
            f"[`{name}.json`](benchmarks/results/{name}.json) |"
        )
    return "\n".join(rows)


def with_readme_figures(readme: str, records: list[Record]) -> str:
    begin, end = readme.find(FIGURES_BEGIN), readme.find(FIGURES_END)
    if begin < 0 or end < begin:
        raise RenderError(f"README.md: no figures block; put {FIGURES_BEGIN} ... {FIGURES_END}")
    table = render_readme_figures(records)
    return readme[: begin + len(FIGURES_BEGIN)] + "\n" + table + "\n" + readme[end:]


# ---- tables in the docs pages ------------------------------------------------------------------
def doc_marks(name: str) -> tuple[str, str]:
    """A docs page shows results file NAME's table between these two lines."""
    return (
        f"<!-- results:{name}:begin (scripts/render_benchmarks.py) -->",
        f"<!-- results:{name}:end -->",
    )


def with_doc_tables(page: str, records: list[Record]) -> str:
    """``page`` with the table (and the notes' last paragraph) of every results file it marks."""
    for record in records:
        begin_mark, end_mark = doc_marks(record["name"])
        begin, end = page.find(begin_mark), page.find(end_mark)
        if begin < 0 or end < begin or not record.get("table"):
            continue
        notes = record.get("notes", "").strip().split("\n\n")[-1]
        body = (
            [markdown_table(record["table"]), notes] if notes else [markdown_table(record["table"])]
        )
        body.append(f"Every round: `benchmarks/results/{record['name']}.json`.")
        page = page[: begin + len(begin_mark)] + "\n" + "\n\n".join(body) + "\n" + page[end:]
    return page


def doc_pages(records: list[Record]) -> list[tuple[Path, str]]:
    """(page, fresh text) of every docs page, its results tables filled in."""
    return [
        (path, with_doc_tables(path.read_text(encoding="utf-8"), records))
        for path in sorted(DOCS_DIR.glob("*.md"))
    ]


# ---- command line ----------------------------------------------------------------------------------
def render_all(results_dir: Path, readme: str) -> tuple[str, str]:
    """(BENCHMARKS.md, README.md) as rendered from ``results_dir``."""
    records = load_results(results_dir)
    return render_benchmarks(records), with_readme_figures(readme, records)


def _diff(path: Path, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), f"{path.name} (committed)", "fresh render", lineterm=""
    )
    return "\n".join(list(lines)[:60])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a fresh render differs")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    try:
        benchmarks, readme = render_all(args.results, README.read_text(encoding="utf-8"))
    except RenderError as error:
        print(f"render_benchmarks: {error}", file=sys.stderr)
        return 1
    pages = [(BENCHMARKS_MD, benchmarks), (README, readme)]
    pages += doc_pages(load_results(args.results))
    stale = [
        (path, new)
        for path, new in pages
        if not path.exists() or path.read_text(encoding="utf-8") != new
    ]
    if args.check:
        for path, new in stale:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            print(f"{path.name} differs from a fresh render:\n{_diff(path, old, new)}")
        if stale:
            print("run: python scripts/render_benchmarks.py (and commit the result)")
        return 1 if stale else 0
    for path, new in stale:
        path.write_text(new, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
