"""`vitkit predict|embed --engine ray` on a real local Ray: the same answers as one process, bad
images as rows, resume, Parquet and URL sources, and a worker killed mid-run.

One Ray session serves the whole module (starting Ray takes seconds); it is shut down at the end
so no Ray process outlives the tests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from conftest import real_photos
from vitkit.cli import main
from vitkit.engines.ray import BatchJob, run_job
from vitkit.inference.settings import LoadSettings


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        object_store_memory=80 * 2**20,
        include_dashboard=False,
        logging_level="WARNING",
        _system_config={"worker_niceness": 0},  # as vitkit's own local Ray (engines.ray)
    )
    try:
        yield
    finally:
        end_ray_and_its_processes()


def end_ray_and_its_processes() -> None:
    """ray.shutdown(), then wait for every process this Ray session started (GCS, raylet, workers:
    all descendants of this process) to exit; a worker still importing torch when Ray stops can
    linger for a minute, so what is left after 10 s is killed (by PID: only our own processes)."""
    started = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=10)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 small JPEGs cut from real photos (distinct files, quick to decode), and one bad file."""
    folder = tmp_path_factory.mktemp("crops")
    for name, pixels in real_photos().items():
        for i in range(8):
            top, left = 37 * i, 23 * i
            crop = pixels[top : top + 160, left : left + 160]
            Image.fromarray(crop).resize((80, 80)).save(folder / f"{name}-{i}.jpg", quality=90)
    (folder / "not-an-image.jpg").write_text("this is not an image\n")
    return folder


def read_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """All shards of an output folder, by id; fails on an id written twice."""
    table = pq.read_table(folder)
    rows = table.to_pylist()
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "an input was written twice"
    return {row["id"]: row for row in rows}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_on_ray_equals_one_process(
    ray_session: None, crops: Path, tiny_hf_classifier: Path, tmp_path: Path, capsys: Any
) -> None:
    model = ["--model", str(tiny_hf_classifier), "--top-k", "3"]
    code, out, _ = cli(capsys, "predict", str(crops), *model, "--format", "json")
    assert code == 1  # the bad file
    expected = {record["input"]: record for record in json.loads(out)}

    ray_args = ["--engine", "ray", "--workers", "2", "--batch-size", "4", "--out", str(tmp_path)]
    code, _, err = cli(capsys, "predict", str(crops), *model, *ray_args)
    assert code == 1 and "1 with an error" in err
    rows = read_rows(tmp_path)
    assert set(rows) == set(expected)
    for name, record in expected.items():
        row = rows[name]
        if "error" in record:
            assert row["error"] == record["error"] and row["predictions"] is None
            continue
        assert row["error"] is None
        got, want = row["predictions"], record["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in want]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5)
        assert (row["label"], row["score"]) == (got[0]["label"], got[0]["score"])


def test_embed_on_ray_equals_one_process_and_resumes(
    ray_session: None, crops: Path, tiny_hf_feature_extractor: Path, tmp_path: Path, capsys: Any
) -> None:
    model = ["--model", str(tiny_hf_feature_extractor), "--pool", "pooler"]
    local = tmp_path / "local.parquet"
    cli(capsys, "embed", str(crops), *model, "--out", str(local))
    expected = pq.read_table(local).to_pylist()

    # First run on half the images (a list file), then on the whole folder: only the rest run.
    out = tmp_path / "shards"
    images = sorted(str(p) for p in crops.glob("*.jpg"))
    half = tmp_path / "half.txt"
    half.write_text("# the first half\n" + "\n".join(images[: len(images) // 2]) + "\n")
    ray_args = ["--engine", "ray", "--workers", "1", "--batch-size", "8", "--out", str(out)]
    cli(capsys, "embed", str(half), *model, *ray_args)
    first = {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert len(read_rows(out)) == len(images) // 2

    code, _, err = cli(capsys, "embed", str(crops), *model, *ray_args)
    assert code == 1 and f"{len(images) // 2} already there were skipped" in err
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in first.items())
    rows = read_rows(out)
    assert set(rows) == {str(p) for p in crops.iterdir()}
    assert rows[str(crops / "not-an-image.jpg")]["embedding"] is None
    for record in expected:
        np.testing.assert_allclose(
            rows[record["input"]]["embedding"], record["embedding"], atol=1e-5
        )

    # The same folder with other settings is another job: refused, naming what changed.
    code, _, err = cli(capsys, "embed", str(crops), *model[:2], "--pool", "cls", *ray_args)
    assert code == 1 and "'pooler' -> 'cls'" in err


def test_parquet_of_image_bytes(
    ray_session: None, crops: Path, tiny_hf_classifier: Path, tmp_path: Path, capsys: Any
) -> None:
    files = sorted(crops.glob("*.jpg"))[:12]
    table = pa.table(
        {
            "sku": [f"sku-{i}" for i in range(len(files))],
            # Hugging Face datasets' Image feature: a {bytes, path} struct.
            "image": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
        }
    )
    pq.write_table(table, tmp_path / "catalogue.parquet", row_group_size=5)  # 3 row groups
    report = run_job(
        BatchJob(
            "predict",
            [str(tmp_path / "catalogue.parquet")],
            tmp_path / "out",
            load=LoadSettings(model=str(tiny_hf_classifier)),
            top_k=2,
            id_column="sku",
            workers=1,
            batch_size=4,
            decode_stage=True,  # as for GPU workers: CPU tasks decode, the workers get pixels
        )
    )
    assert (report.written, report.failed) == (12, 0)
    rows = read_rows(tmp_path / "out")
    model = ["--model", str(tiny_hf_classifier), "--top-k", "2", "--format", "json"]
    code, out, _ = cli(capsys, "predict", *map(str, files), *model)
    assert code == 0
    for i, record in enumerate(json.loads(out)):
        got = rows[f"sku-{i}"]["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in record["predictions"]]
        np.testing.assert_allclose(
            [p["score"] for p in got], [p["score"] for p in record["predictions"]], atol=1e-5
        )


def test_a_killed_worker_loses_no_input_and_writes_none_twice(
    ray_session: None, crops: Path, tiny_hf_classifier: Path, tmp_path: Path
) -> None:
    killed: list[int] = []
    written: list[int] = []

    def kill_a_worker(rows: int) -> None:
        written.append(rows)
        if killed:
            return
        ours = psutil.Process().children(recursive=True)  # this Ray session's processes only
        workers = [p for p in ours if is_model_worker(p)]
        assert workers, "no Ray model worker found"
        os.kill(workers[0].pid, signal.SIGKILL)
        killed.append(sum(written))

    job = BatchJob(
        "predict",
        [str(crops)],
        tmp_path,
        load=LoadSettings(model=str(tiny_hf_classifier)),
        workers=2,
        batch_size=1,
    )
    report = run_job(job, on_rows=kill_a_worker)
    total = len(list(crops.iterdir()))
    assert killed and killed[0] < total  # killed mid-run
    assert report.written == total and len(read_rows(tmp_path)) == total


def is_model_worker(process: Any) -> bool:
    """Ray titles an actor's process after its class: ray::MapWorker(MapBatches(VitkitPredictor))."""
    try:
        return "MapBatches(VitkitPredictor)" in " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def test_slides_on_ray_equal_one_process(
    ray_session: None, tiny_hf_classifier: Path, tmp_path: Path, capsys: Any
) -> None:
    """Two slides (TIFF read by tifffile, SVS by OpenSlide) and a broken one over two workers:
    the same tile tables as `vitkit slide` in this process; the broken slide is a line, not a
    failed job. (Resuming is run_slide's own, tested in test_slides.py.)"""
    import slide_samples as samples

    levels = samples.pyramid(samples.mosaic()[0])
    slides = [
        samples.write_tiff(tmp_path / "a.tif", levels),
        samples.write_svs(tmp_path / "b.svs", levels),
        tmp_path / "broken.svs",
    ]
    slides[2].write_bytes(b"not a slide\n")
    common = ["--model", str(tiny_hf_classifier), "--level", "1", "--batch-size", "8"]
    cli(capsys, "slide", *map(str, slides[:2]), *common, "--out", str(tmp_path / "local"))
    ray_args = ["--engine", "ray", "--workers", "2", "--out", str(tmp_path / "ray")]
    code, _, err = cli(capsys, "slide", *map(str, slides), *common, *ray_args)
    assert code == 1 and "broken.svs: not a slide format" in err
    assert err.strip().splitlines()[-1] == f"2 of 3 slides done -> {tmp_path / 'ray'}"
    for name in ("a", "b"):
        local = pq.read_table(tmp_path / "local" / name / "tiles.parquet").to_pylist()
        on_ray = pq.read_table(tmp_path / "ray" / name / "tiles.parquet").to_pylist()
        assert len(on_ray) == len(local) > 0
        for want, got in zip(local, on_ray, strict=True):
            assert (got["x"], got["y"], got["top_class"]) == (
                want["x"],
                want["y"],
                want["top_class"],
            )
            probabilities = [k for k in want if k.startswith("prob_")]
            np.testing.assert_allclose(
                [got[k] for k in probabilities], [want[k] for k in probabilities], atol=1e-5
            )


def test_engine_ray_without_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, crops: Path, tmp_path: Path, capsys: Any
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    code, _, err = cli(capsys, "predict", str(crops), "--engine", "ray", "--out", str(tmp_path))
    assert code == 1
    assert err.strip().endswith("pip install 'vitkit[ray]'") and err.count("\n") == 1


def test_ray_is_an_optional_extra() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("ray") for d in project["dependencies"])
    assert any(d.startswith("ray[data]") for d in project["optional-dependencies"]["ray"])


def test_model_arg_reaches_the_ray_workers_and_the_job_identity(
    ray_session: None, crops: Path, tiny_hf_classifier: Path, tmp_path: Path, capsys: Any
) -> None:
    """--model-arg on Ray: the workers load the model with the override (the same scores as one
    process with it, not those without it), and resuming with another override is refused."""
    images = [str(p) for p in sorted(crops.glob("*.jpg"))[:6]]
    model = ["--model", str(tiny_hf_classifier), "--top-k", "5", "--format", "json"]
    override = ["--model-arg", "global_pool=avg"]  # the head reads the mean patch token
    code, out, _ = cli(capsys, "predict", *images, *model, *override)
    assert code == 0
    with_override = {r["input"]: r["predictions"] for r in json.loads(out)}
    code, out, _ = cli(capsys, "predict", *images, *model)
    without = {r["input"]: r["predictions"] for r in json.loads(out)}

    ray_args = ["--engine", "ray", "--workers", "1", "--batch-size", "3", "--out", str(tmp_path)]
    code, _, _ = cli(capsys, "predict", *images, *model[:4], *override, *ray_args)
    assert code == 0
    rows = read_rows(tmp_path)
    for name, want in with_override.items():
        got = {p["label"]: p["score"] for p in rows[name]["predictions"]}
        np.testing.assert_allclose(
            [got[p["label"]] for p in want], [p["score"] for p in want], atol=1e-5
        )
        unchanged = {p["label"]: p["score"] for p in without[name]}
        assert max(abs(got[label] - unchanged[label]) for label in got) > 1e-3

    code, _, err = cli(capsys, "predict", *images, *model[:4], *ray_args)  # no override now
    assert code == 1 and "overrides: {'global_pool': 'avg'} -> {}" in err
    assert len(err.strip().splitlines()) == 1
