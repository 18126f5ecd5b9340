"""Saving never leaves half a file or half a directory, whatever happens mid-write."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vitkit.atomic_files import (
    atomic_torch_save,
    atomic_write_text,
    recover_directories,
    write_directory_atomically,
)


def writer(text: str) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        directory.mkdir()
        (directory / "weights").write_text(text)

    return write


def test_directory_is_replaced_whole_and_a_crash_between_renames_is_recovered(
    tmp_path: Path,
) -> None:
    target = tmp_path / "best"
    write_directory_atomically(target, writer("one"))
    write_directory_atomically(target, writer("two"))
    assert (target / "weights").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no staging or .old left
    # a crash between the two renames leaves .best.old and no best: recovery puts it back
    target.rename(tmp_path / ".best.old")
    (tmp_path / ".last.pt.tmp-123").write_bytes(b"torn")
    (tmp_path / ".best.tmp-9-abcd").mkdir()
    recover_directories(tmp_path)
    assert (target / "weights").read_text() == "two"
    assert not list(tmp_path.glob(".*"))


def test_a_failing_write_leaves_the_old_directory_and_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "best"
    write_directory_atomically(target, writer("good"))

    def broken(directory: Path) -> None:
        directory.mkdir()
        (directory / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_directory_atomically(target, broken)
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]
    with pytest.raises(FileNotFoundError, match="created no directory"):
        write_directory_atomically(target, lambda directory: None)
    assert (target / "weights").read_text() == "good"


def test_saved_directories_follow_the_umask_not_tempfiles_private_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        target = write_directory_atomically(tmp_path / "shared" / "ckpt", writer("x"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # mkdtemp would have made it 0700


def test_atomic_file_writes_replace_and_leave_no_temporaries(tmp_path: Path) -> None:
    text_file = tmp_path / "metrics.json"
    atomic_write_text(text_file, "old")
    atomic_write_text(text_file, "new")
    checkpoint = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 3, "weights": torch.arange(4)}, checkpoint)
    assert text_file.read_text() == "new"
    loaded = torch.load(checkpoint)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.json"]
