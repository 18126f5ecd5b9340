"""Every README code block is run by CI (scripts/run_readme.py, a step of .ci/run) or marked as
needing the internet; the README stays a ten-minute read."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runner():
    spec = importlib.util.spec_from_file_location("run_readme", ROOT / "scripts" / "run_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


run_readme = _runner()


def test_every_block_is_run_or_marked() -> None:
    blocks = run_readme.blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert run_readme.problems(blocks) == []
    assert sum(block.runs for block in blocks) >= 8, "the tour's blocks are run by CI"


def test_a_block_of_another_kind_is_refused() -> None:
    blocks = run_readme.blocks(
        "```console\n$ vitkit --help\n```\n\n```bash network\npip install vitkit\n```\n"
    )
    assert [b.language for b in blocks] == ["console", "bash"]
    assert len(run_readme.problems(blocks)) == 1


def test_ci_blocks_are_what_ci_runs() -> None:
    """The `ci` blocks hold `make demo` and `make test`: .ci/run runs `make test`, and its wheel
    step runs `vitkit demo`, which is all `make demo` runs after setting up .venv."""
    blocks = run_readme.blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    ci = "\n".join(b.code for b in blocks if "ci" in b.tags)
    assert re.findall(r"^make (\w+)", ci, re.M) == ["demo", "test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "scripts/run_readme.py" in (ROOT / ".ci" / "run").read_text()
    assert '"$work/venv/bin/vitkit" demo' in (ROOT / ".ci" / "wheel_install.sh").read_text()
    assert "$(PY) -m vitkit demo" in (ROOT / "Makefile").read_text()


def test_readme_is_a_ten_minute_read() -> None:
    words = len((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert words <= 2500, f"README.md has {words} words: move the detail to docs/"
