"""One CPU forward as sub-batches run side by side, one intra-op thread each.

Why: PyTorch parallelises a forward inside each op (OpenMP), with a barrier at the end of every
op, and the ops between the GEMMs (attention, GELU, LayerNorm, int8's quantize steps) scale
poorly across threads. Splitting the batch and running each part on its own thread with one
intra-op thread removes the barriers. ViT-B/16 at batch 8 on this 2-core CPU, 9 interleaved
rounds: fp32 3.97 vs 3.64 images/s (1.09x), int8 6.63 vs 6.16 (1.08x); one image per
sub-batch was slower than intra-op threads (int8: 5.6 vs 6.2), so each part gets >= 2 images.

Results are the same numbers up to float rounding (each sub-batch is a smaller GEMM). Dynamic
int8 quantization picks each input's range from the tensor it sees, so int8 logits depend on
which images share a sub-batch, as they depend on the batch without the split.
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


def worth_splitting(batch_size: int, threads: int | None) -> bool:
    """Two or more threads and at least two images per sub-batch."""
    return threads is not None and threads >= 2 and batch_size >= 2 * threads
