"""The product speaks of itself only: no issue numbers, work-log headings, dated run notes or
remarks about the machine some run happened on, in the README, the docs, BENCHMARKS.md, the
package or the tests. A figure carries its machine and date in its results file
(benchmarks/results/*.json), which BENCHMARKS.md prints on its "Measured ..." lines.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "an issue number": re.compile(r"\b[Ii]ssues?[ -]?#?\d+|\(#\d+\)"),
    "a virtual machine remark": re.compile(r"\bVMs?\b"),
    "a work session": re.compile(r"\b[Ss]essions? \d+|\bthis session\b|\bwork session"),
    "a clock time": re.compile(r"\b\d{1,2}:\d{2}(-\d{1,2}:\d{2})? ?UTC\b"),
    "a date": re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b"),
}


def _files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted((ROOT / "src").rglob("*.py"))
    files += sorted(
        path for path in (ROOT / "tests").rglob("*.py") if path.name != Path(__file__).name
    )
    return [path for path in files if path.exists()]


def test_no_issue_numbers_work_logs_or_machine_remarks():
    found = []
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if path.name == "BENCHMARKS.md" and line.startswith("Measured "):
                continue  # the results file's own date and machine, printed by the render
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)
