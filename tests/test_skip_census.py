"""A test skipped because a package is missing fails the run; the allowed machine facts do not.

Runs pytest in a subprocess on two throwaway test files with the repository's skip census
(tests/skip_census.py), as CI does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _pytest(folder: Path, body: str) -> subprocess.CompletedProcess[str]:
    (folder / "conftest.py").write_text("from skip_census import *  # noqa: F403\n")
    (folder / "test_sample.py").write_text("import pytest\n\n" + body)
    environment = {**os.environ, "PYTHONPATH": str(TESTS), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(folder),
            str(folder),
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=folder,
        check=False,
    )


def test_a_skip_for_a_missing_package_fails_the_run(tmp_path: Path) -> None:
    # module level, as the old tests did: every test of the file skipped, none ran
    run = _pytest(
        tmp_path,
        "dev_package = pytest.importorskip('no_such_dev_package')\n\n"
        "def test_needs_a_package():\n    assert dev_package\n",
    )
    assert run.returncode == 1, run.stdout
    assert "NOT ALLOWED (fails the run): could not import 'no_such_dev_package'" in run.stdout


def test_machine_facts_may_skip_and_the_census_lists_them(tmp_path: Path) -> None:
    run = _pytest(
        tmp_path,
        "def test_gpu():\n    pytest.skip('needs a CUDA device')\n\n"
        "def test_timing():\n    pytest.skip('other processes are running: not a quiet machine')\n",
    )
    assert run.returncode == 0, run.stdout
    assert "skip census" in run.stdout
    assert "1  allowed: needs a CUDA device" in run.stdout


def test_no_test_skips_for_a_package_dev_installs() -> None:
    """`pytest.importorskip` of a package `.[dev]` installs would turn a broken install into
    skipped tests: import it instead (the census would fail the run, this says where)."""
    import re
    import tomllib

    project = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]
    dev = {
        re.split(r"[<>=\[;]", d)[0].strip().lower() for d in project["optional-dependencies"]["dev"]
    }
    import_names = {
        "scikit-learn": "sklearn",
        "scikit-image": "skimage",
        "import-linter": "importlinter",
    }
    modules = {import_names.get(name, name.replace("-", "_")) for name in dev}
    found = [
        f"{path.name}: importorskip({module!r})"
        for path in sorted(TESTS.glob("*.py"))
        for module in re.findall(r"importorskip\(\s*[\"']([\w.]+)", path.read_text())
        if module.split(".")[0] in modules
    ]
    assert not found, found
