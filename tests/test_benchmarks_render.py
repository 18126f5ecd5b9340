"""BENCHMARKS.md and the README's figures table are a render of benchmarks/results/*.json.

The committed documents must equal a fresh render, and every results file must show in it: a
deleted results file, a stray file in that folder or a file without a table fails the check.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_io  # noqa: E402


def _render_module():
    spec = importlib.util.spec_from_file_location(
        "render_benchmarks", ROOT / "scripts" / "render_benchmarks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def test_committed_render_equals_a_fresh_render(capsys):
    assert render.main(["--check"]) == 0, capsys.readouterr().out


def test_deleting_any_results_file_fails_the_check(tmp_path):
    committed = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files = sorted(render.RESULTS_DIR.glob("*.json"))
    assert files, "no results files"
    for removed in files:
        folder = tmp_path / removed.stem
        shutil.copytree(render.RESULTS_DIR, folder)
        (folder / removed.name).unlink()
        benchmarks, _ = render.render_all(folder, readme)
        assert benchmarks != committed, f"deleting {removed.name} left BENCHMARKS.md as it was"
        assert f"benchmarks/results/{removed.name}" not in benchmarks


def test_a_stray_file_or_a_file_without_a_table_is_refused(tmp_path):
    (tmp_path / "notes.jsonl").write_text("{}\n")
    with pytest.raises(render.RenderError, match=r"notes\.jsonl: not a results file"):
        render.load_results(tmp_path)
    (tmp_path / "notes.jsonl").unlink()
    results_io.write_results(
        "bare", title="Bare", command="x", summary={}, rounds=[1], results_dir=tmp_path
    )
    with pytest.raises(render.RenderError, match=r"bare.json has no table"):
        render.render_benchmarks(render.load_results(tmp_path))


def test_write_results_records_the_machine_and_every_round(tmp_path):
    results_io.mark_start()
    path = results_io.write_results(
        "demo_speed",
        title="Demo speed",
        summary={"ratio": results_io.spread([1.0, 1.2, 1.1])},
        rounds=[{"round": i, "seconds": s} for i, s in enumerate([1.0, 1.2, 1.1])],
        table={
            "columns": ["what", "ratio"],
            "rows": [["a", results_io.median_spread([1.0, 1.2, 1.1])]],
        },
        results_dir=tmp_path,
    )
    record = json.loads(path.read_text())
    machine = record["machine"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0 and machine["cpu_model"]
    assert len(machine["load_average_before"]) == 3 and len(machine["load_average_after"]) == 3
    assert machine["versions"]["python"] and record["git_commit"] and record["date"].endswith("Z")
    assert record["table"]["rows"] == [["a", "1.10 (1.00-1.20)"]]
    assert record["summary"]["ratio"] == {"median": 1.1, "min": 1.0, "max": 1.2, "rounds": 3}
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        results_io.write_results(
            "x",
            title="x",
            summary={},
            rounds=[],
            table={"columns": ["a"], "rows": [[1, 2]]},
            results_dir=tmp_path,
        )


def test_a_goal_is_met_only_when_every_round_clears_it():
    assert results_io.goal_verdict([1.12, 1.15, 1.2], goal=1.1) == "met"
    assert results_io.goal_verdict([1.05, 1.15], goal=1.1) == "inconclusive"
    assert results_io.goal_verdict([0.9, 1.0], goal=1.1) == "missed"
    assert results_io.goal_verdict([0.08, 0.09], goal=0.1, higher_is_better=False) == "met"
    assert results_io.goal_verdict([0.08, 0.12], goal=0.1, higher_is_better=False) == "inconclusive"
