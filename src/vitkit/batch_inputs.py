"""Decode many user inputs in batches, keeping going when one of them is bad.

The CLI's `predict` and `embed` run over folders of mixed quality: a truncated JPEG or a text file
named .jpg must be reported for that input and must not stop the rest. Decoding runs in a small
thread pool (PIL and torchvision release the GIL while decoding) so it overlaps across images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vitkit.errors import VitkitError


@dataclass
class DecodedBatch:
    """One batch of inputs: the ones that decoded (in order) and the ones that failed."""

    sources: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _decode_one(source: str, decode: Callable[[str], Any]) -> tuple[Any, str | None]:
    try:
        return decode(source), None
    except VitkitError as error:
        return None, str(error)
    except OSError as error:  # unreadable path, permission denied, ...
        return None, f"{source}: {error.strerror or error}"


def decode_batches(
    sources: Sequence[str],
    batch_size: int,
    decode: Callable[[str], Any] | None = None,
    workers: int = 2,
) -> Iterator[DecodedBatch]:
    """Yield batches of decoded images; failures are collected per source, never raised."""
    if decode is None:
        from vitkit.io import load_image

        decode = load_image
    decoder = decode
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(sources), batch_size):
            chunk = list(sources[start : start + batch_size])
            batch = DecodedBatch()
            for source, (image, error) in zip(
                chunk, pool.map(lambda s: _decode_one(s, decoder), chunk), strict=True
            ):
                if error is None:
                    batch.sources.append(source)
                    batch.images.append(image)
                else:
                    batch.errors[source] = error
            yield batch
