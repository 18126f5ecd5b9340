"""The output folder of a batch job: Parquet shards, each written whole, and what they hold.

    out/
      _vitkit_job.json      what the job computes (task, model, settings): a re-run must match
      part-000000.parquet   id, results..., error; one row per input, each input in one shard
      part-000001.parquet

A shard is written to a temporary name and renamed into place (``atomic_open``), so a killed
job leaves whole shards only. A re-run reads the ids of the shards there (``written``) and skips
those inputs: that is the whole resume protocol. The writer also drops a row whose id it already
holds, so a retried Ray task can never write an input twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vitkit.atomic_files import atomic_open, atomic_write_text
from vitkit.engines.ids import IdSet
from vitkit.errors import EngineError

JOB_FILE = "_vitkit_job.json"  # "_": Parquet readers skip it when reading the folder
SHARD_GLOB = "part-*.parquet"


class ShardWriter:
    """Collects result rows and writes them as shards of ``shard_rows`` (or every ``flush_seconds``,
    so a slow job loses at most that much work when the driver dies)."""

    def __init__(
        self,
        folder: Path,
        job: dict[str, Any],
        *,
        shard_rows: int = 10_000,
        flush_seconds: float = 60.0,
    ) -> None:
        self.folder = folder
        self.shard_rows = shard_rows
        self.flush_seconds = flush_seconds
        folder.mkdir(parents=True, exist_ok=True)
        check_job(folder, job)
        for leftover in folder.glob(".part-*.tmp-*"):  # a shard being written when a run died
            leftover.unlink(missing_ok=True)
        shards = sorted(folder.glob(SHARD_GLOB))
        self.written = IdSet(read_ids(shards))
        self.previous_rows = len(self.written)
        self._next_index = 1 + max((shard_index(s) for s in shards), default=-1)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        self.shards: list[Path] = []

    def add(self, table: pa.Table) -> pa.Table:
        """Keep the rows of ``table`` whose id is not written yet; returns those rows."""
        new = self.written.add_new(table.column("id").to_pylist())
        fresh = table if new.all() else table.filter(pa.array(new))
        if fresh.num_rows:
            self._pending.append(fresh)
            self._pending_rows += fresh.num_rows
        overdue = time.monotonic() - self._last_flush > self.flush_seconds
        if self._pending_rows >= self.shard_rows or (overdue and self._pending_rows):
            self.flush()
        return fresh

    def flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending, promote_options="default")
        path = self.folder / f"part-{self._next_index:06d}.parquet"
        with atomic_open(path) as handle:
            pq.write_table(table, handle)
        self.shards.append(path)
        self._next_index += 1
        self._pending, self._pending_rows = [], 0
        self._last_flush = time.monotonic()


def shard_index(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def read_ids(shards: list[Path]) -> list[str]:
    ids: list[str] = []
    for shard in shards:
        try:
            ids.extend(pq.read_table(shard, columns=["id"]).column("id").to_pylist())
        except (OSError, pa.ArrowInvalid, KeyError) as error:
            raise EngineError(
                f"{shard}: not a vitkit output shard ({error}); move it out of the output folder"
            ) from error
    return ids


def check_job(folder: Path, job: dict[str, Any]) -> None:
    """Write ``_vitkit_job.json``, or check that the one there describes the same job (resuming)."""
    path = folder / JOB_FILE
    if not path.exists():
        if any(folder.glob(SHARD_GLOB)):
            raise EngineError(f"{folder} holds shards but no {JOB_FILE}: use a new output folder")
        atomic_write_text(path, json.dumps(job, indent=2, sort_keys=True) + "\n")
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EngineError(f"{path}: unreadable ({error}); use a new output folder") from error
    changed = sorted(key for key in set(before) | set(job) if before.get(key) != job.get(key))
    if changed:
        differences = ", ".join(f"{k}: {before.get(k)!r} -> {job.get(k)!r}" for k in changed)
        raise EngineError(
            f"{folder} holds the output of another job ({differences}); resume it with the same "
            "settings, or write to a new output folder"
        )
