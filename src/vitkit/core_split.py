"""One CPU forward as sub-batches run side by side, one intra-op thread each.

Why: PyTorch parallelises a forward inside each op (OpenMP), with a barrier at the end of every
op. For int8 dynamic quantization that scales worse than fp32 on this 2-core CPU: each quantized
Linear first quantizes its input (a short serial-ish pass) and the int8 GEMMs are short, so the
threads wait at barriers more. Splitting the batch in two and running each half on its own
thread with one intra-op thread removes the barriers (measured with ViT-B/16 int8 at batch 8:
6.7 vs 6.2 images/s, interleaved; fp32 gained nothing, so it keeps intra-op threads).

Dynamic quantization picks each input's int8 range from the tensor it sees, so int8 logits
depend on which images share a sub-batch (as they depend on the batch without the split); fp32
would not change.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch


def _one_thread() -> None:
    # OpenMP's thread count is per calling thread: the caller's own setting is left alone.
    torch.set_num_threads(1)


class CoreSplit:
    """``split(forward, batch)``: ``forward`` on ``workers`` sub-batches at once, concatenated."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(
            max_workers=workers, initializer=_one_thread, thread_name_prefix="vitkit-core"
        )

    def __call__(
        self, forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor
    ) -> torch.Tensor:
        def run(part: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():  # grad mode is per thread
                return forward(part)

        return torch.cat(list(self._pool.map(run, batch.tensor_split(self.workers))))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def worth_splitting(precision: str, batch_size: int, threads: int | None) -> bool:
    """int8 with two or more threads and at least two images per sub-batch.

    One image per sub-batch ran slower than intra-op threads (ViT-B int8: 5.6 vs 6.2 images/s).
    """
    return (
        precision == "int8" and threads is not None and threads >= 2 and (batch_size >= 2 * threads)
    )
