"""The layer contract (pyproject's [tool.importlinter], run by `make lint`) holds, and fails on a
wrong arrow: an import hidden under TYPE_CHECKING in a low layer is caught like any other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import importlinter  # noqa: F401  (a .[dev] package: missing must fail)

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


def test_a_type_hint_circle_inside_training_breaks_it(tmp_path: Path) -> None:
    """training's modules are checked too: the callbacks naming the trainer's Run (the circle
    that once had training skipped) is refused again."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    callbacks = tmp_path / "src" / "vitkit" / "training" / "callbacks.py"
    callbacks.write_text(
        callbacks.read_text()
        + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        + "    from vitkit.training.trainer import train\n"
    )
    result = _lint(tmp_path)
    assert result.returncode == 1
    assert "No cycles are allowed in vitkit.training" in result.stdout
    assert ".callbacks -> .trainer" in result.stdout  # the arrow this test added is named


def test_images_may_import_no_other_vitkit_package() -> None:
    """The forbidden contract names every package and module of vitkit but images, errors, options and
    atomic_files, so one added later cannot slip past it."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (images,) = [c for c in contracts["contracts"] if c.get("source_modules") == ["vitkit.images"]]
    package = ROOT / "src" / "vitkit"
    everything = {
        f"vitkit.{path.stem}"
        for path in package.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    allowed = {"vitkit.images", "vitkit.errors", "vitkit.options", "vitkit.atomic_files"}
    assert set(images["forbidden_modules"]) == everything - allowed
