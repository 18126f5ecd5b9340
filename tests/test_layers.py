"""The layer contract (pyproject's [tool.importlinter], run by `make lint`) holds, and fails on a
wrong arrow: an import hidden under TYPE_CHECKING in a low layer is caught like any other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_the_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_wrong_arrow_breaks_it(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    config = tmp_path / "src" / "vitkit" / "models" / "config.py"
    config.write_text(
        config.read_text()
        + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        + "    from vitkit.inference.classifier import Classifier\n"
    )
    result = _lint(tmp_path)
    assert result.returncode == 1
    assert "vitkit.models is not allowed to import vitkit.inference" in result.stdout
    assert "vitkit.models.config -> vitkit.inference.classifier" in result.stdout
