"""Which images a list of command-line inputs names: folders become their image files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from vitkit.images.decode import IMAGE_EXTENSIONS, is_url

__all__ = ["expand_inputs"]


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files and URLs as given; directories replaced by their image files (recursive, sorted).

    Paths that do not exist, and directories without images, are kept as they are so the caller
    reports an error for that input (``load_image`` says what is wrong) and goes on with the rest.
    """
    expanded: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if not is_url(text) and path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
            expanded.extend(found or [text])
        else:
            expanded.append(text)
    return expanded
