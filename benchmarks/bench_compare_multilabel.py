"""`vitkit compare` on label tables: the five rows, multi-label, on 2x2 mosaics of real digits.

Usage: python benchmarks/bench_compare_multilabel.py [--out runs/compare-multilabel]
       [--sizes 1500,300,600] [--seed 0] [--source digits|fashion-mnist] [-- COMPARE OPTIONS...]

Builds the mosaics of ``vitkit.experiments.mosaics`` (train / val / test label tables, seeded,
unbalanced: the commonest digit in ~62% of the training mosaics, the rarest in ~4%; the same
data as ``bench_multilabel.py``) in OUT/data, then runs ``vitkit compare --data OUT/data`` with
compare's own defaults (every row multi-label; anything after ``--`` is passed on). The table
(mAP / macro-F1 / micro-F1 / ROC-AUC) is OUT/table.md; a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from results_io import write_results
from vitkit.cli import main
from vitkit.experiments.mosaics import build_mosaics


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/compare-multilabel")
    parser.add_argument("--sizes", default="1500,300,600", help="train,val,test mosaics")
    parser.add_argument("--seed", type=int, default=0, help="the mosaics' seed")
    parser.add_argument("--source", default="digits", choices=["digits", "fashion-mnist"])
    args, rest = parser.parse_known_args()
    return args, [a for a in rest if a != "--"]


def run() -> None:
    args, compare_options = parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "summary.json").exists():
        train, val, test = (int(n) for n in args.sizes.split(","))
        built = build_mosaics(data, source=args.source, sizes=(train, val, test), seed=args.seed)
        print(f"built {data}: {built.sizes} mosaics, training counts {built.counts['train']}")
    started = time.perf_counter()
    code = main(["compare", "--data", str(data), "--out", str(out), *compare_options])
    wall = time.perf_counter() - started
    if code == 0:
        print(f"wrote {publish(out, wall)}")


def publish(out: Path, wall: float) -> Path:
    """benchmarks/results/compare_multilabel.json from the compare run's results.json."""
    import json

    compared = json.loads((out / "results.json").read_text())
    metrics = ("mAP", "macro_f1", "micro_f1", "roc_auc")
    rows = [
        [row["title"], *((row.get("report") or {}).get(m) for m in metrics), row.get("best_epoch")]
        for row in compared["rows"]
    ]
    return write_results(
        "compare_multilabel",
        title="`vitkit compare` on multi-label digit mosaics",
        command="python benchmarks/bench_compare_multilabel.py " + " ".join(sys.argv[1:]),
        summary={"wall_s": wall, "rows": len(rows)},
        rounds=compared["rows"],
        table={"columns": ["model", *metrics, "best epoch"], "rows": rows},
        notes=compared.get("notes", "") if isinstance(compared.get("notes"), str) else "",
    )


if __name__ == "__main__":
    run()
