"""What a base install (``pip install vitkit``, no extras) can do: the demo's bundled data, and
a one-line answer naming the extra where a command needs one. The wheel itself is built and
installed in a fresh environment by .ci/run (``vitkit demo`` from the wheel, to the end)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from vitkit.experiments.demo_data import load_digits_arrays

# Runs vitkit's CLI with the named top-level packages unimportable, as on a base install.
WITHOUT = """
import sys
from importlib.abc import MetaPathFinder

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
import importlib.util
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in {blocked!r} else real_find_spec(name, *a)
from vitkit.cli import main
sys.exit(main({argv!r}))
"""


def run_without(blocked: set[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = WITHOUT.format(blocked=blocked, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_bundled_digits_equal_scikit_learns() -> None:
    images, labels, classes = load_digits_arrays()
    digits = load_digits()
    expected = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, digits.target)
    assert classes == [str(d) for d in range(10)]


def test_engine_ray_without_the_extra_names_it_in_one_line(tmp_path: Path) -> None:
    run = run_without(
        {"ray", "pyarrow"},
        ["predict", str(tmp_path), "--engine", "ray", "--out", str(tmp_path / "out")],
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines() == [
        "vitkit predict: error: --engine ray needs Ray: pip install 'vitkit[ray]'"
    ]
