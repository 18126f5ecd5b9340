"""Files and directories that hold either the old version or the new one, never half of one.

A run can die at any moment (Ctrl-C, the OOM killer, a lost machine); what it leaves behind must
still load. Everything vitkit saves goes through these helpers:

- ``atomic_write_text`` / ``atomic_write_bytes`` / ``atomic_torch_save``: write a temporary file beside the target,
  flush it to disk, then ``os.replace`` it over the target (one atomic rename).
- ``write_directory_atomically``: fill a staging directory beside the target, then swap it in.
  A directory cannot replace an existing one in a single rename, so the old one is first renamed
  to ``.NAME.old``; ``recover_directories`` puts it back if the process died between the two
  renames, and drops staging leftovers (``.NAME.tmp-*``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``: never half a file."""
    tmp = _temporary_name(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``: never half a file."""
    tmp = _temporary_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing, but into a temporary file that replaces ``path`` only
    when the block ends without an error (a writer that takes a file object: np.save, csv)."""
    tmp = _temporary_name(path)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file name beside ``path`` for a writer that wants a name (onnx.save); it
    replaces ``path`` when the block ends without an error, and is removed otherwise."""
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, flushed to disk, then ``os.replace``d into place."""
    import torch

    tmp = _temporary_name(path)
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_directory_atomically(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(staging)`` creates and fills a directory beside ``directory``; then it is swapped in.

    ``staging`` does not exist yet: ``write`` makes it (``mkdir``), as any function that saves a
    model into a new directory does, so user-supplied savers work unchanged and the directory
    gets the umask's mode (``tempfile.mkdtemp`` would make every checkpoint private, 0700). A
    failure while writing removes the staging directory and leaves ``directory`` as it was.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_name(target)
    try:
        write(staging)
        if not staging.is_dir():
            raise FileNotFoundError(f"{staging}: the writer for {target} created no directory")
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def recover_directories(folder: Path) -> None:
    """After a killed run: drop staging leftovers, restore a directory caught mid-swap."""
    for tmp in folder.glob(".*.tmp-*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    for old in folder.glob(".*.old"):
        target = folder / old.name[1 : -len(".old")]
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)


def _temporary_name(target: Path) -> Path:
    # Beside the target (same file system, so os.replace is a rename) and hidden; unique per
    # process and call, so two writers never share one.
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)  # put the previous version back
        raise
    shutil.rmtree(old, ignore_errors=True)
