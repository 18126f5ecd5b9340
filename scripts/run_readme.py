"""Run the README's code blocks, top to bottom, in a scratch folder: the tour must work as written.

    python scripts/run_readme.py                   # every runnable block, in a temporary folder
    python scripts/run_readme.py --workdir /tmp/t  # keep the folder (a block's files for the next)
    python scripts/run_readme.py --list            # each block and how it is treated

A fenced block's info string says what it is:

- ```` ```bash ```` / ```` ```python ````: run, in order, in one folder (so a block may use what
  an earlier one wrote, as a reader following the tour would); a non-zero exit fails the run;
- ```` ```bash network ````: needs the internet (a model hub, a URL, PyPI): shown, not run;
- ```` ```bash ci ````: the repository's own commands (``make demo``, ``make test``), which CI
  runs itself (.ci/run);
- ```` ```text ````: output, not run.

The tour starts where ``make demo`` leaves a reader (a model in ``runs/demo/run/best``), so the
script first runs ``vitkit demo`` in the folder unless that model is there. CI runs it (.ci/run)
with the development environment's ``vitkit`` first on PATH. ``tests/test_readme.py`` checks
that every block is one of these kinds.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
RUNNABLE = {"bash", "python"}
KINDS = {"network", "ci"}


@dataclass
class Block:
    line: int
    language: str
    tags: set[str]
    code: str

    @property
    def runs(self) -> bool:
        return self.language in RUNNABLE and not (self.tags & KINDS)


def blocks(text: str) -> list[Block]:
    """Every fenced block of a markdown text, with the line its fence opens on."""
    found = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        language, tags = (words[0], set(words[1:])) if words else ("", set())
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(line, language, tags, match.group(2)))
    return found


def problems(found: list[Block]) -> list[str]:
    """Blocks that are neither runnable, marked network/ci, nor output."""
    wrong = []
    for block in found:
        if block.language == "text" or block.runs:
            continue
        if block.language in RUNNABLE and block.tags & KINDS:
            continue
        wrong.append(
            f"README.md:{block.line}: a ```{block.language} block: use bash or python (run), "
            "add 'network' or 'ci', or make it ```text (output)"
        )
    return wrong


def run(block: Block, workdir: Path) -> int:
    command = ["bash", "-euo", "pipefail", "-c", block.code]
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    print(f"--- README.md:{block.line} ({block.language})\n{block.code}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False
    )
    print(f"--- exit {done.returncode} in {time.perf_counter() - started:.0f} s", flush=True)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="folder to run in (kept)")
    parser.add_argument("--list", action="store_true", help="list the blocks, run nothing")
    parser.add_argument("--from-line", type=int, default=0, help="skip blocks above this line")
    args = parser.parse_args(argv)
    found = blocks(README.read_text(encoding="utf-8"))
    wrong = problems(found)
    if wrong:
        print("\n".join(wrong), file=sys.stderr)
        return 1
    if args.list:
        for block in found:
            kind = "run" if block.runs else (" ".join(sorted(block.tags)) or block.language)
            print(
                f"README.md:{block.line}: {kind}: {block.code.splitlines()[0] if block.code else ''}"
            )
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vitkit-readme-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "runs" / "demo" / "run" / "best").exists():
        demo = Block(0, "bash", set(), "vitkit demo --no-progress  # what `make demo` runs\n")
        if run(demo, workdir) != 0:
            return 1
    for block in found:
        if block.runs and block.line >= args.from_line and run(block, workdir) != 0:
            print(f"README.md:{block.line}: this block failed (folder: {workdir})", file=sys.stderr)
            return 1
    print(f"every runnable README block ran (folder: {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
