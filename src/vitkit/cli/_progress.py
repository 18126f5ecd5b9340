"""The progress bar every long command draws on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PROGRESS_THRESHOLD = 5  # fewer inputs than this: no progress bar


@contextmanager
def progress_bar(
    total: int, description: str, *, enabled: bool = True
) -> Iterator[Callable[[int], Any]]:
    """A rich progress bar on stderr, advanced by the function it yields; a no-op for a handful
    of inputs or when not ``enabled``."""
    from rich.console import Console  # rich is only needed once a command runs
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not enabled or total < PROGRESS_THRESHOLD,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
