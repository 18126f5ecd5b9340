"""Peak memory of a forward pass (and ``synchronize``, the device's queue drained, which every
measurement needs): CUDA's allocator statistics on a GPU; on a CPU the resident
set size sampled while the forward runs (allocator caches trimmed first, so the figure is the
forward's own)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

Forward = Callable[[Any], Any]  # a forward pass: batch -> output


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    """Give glibc's free heap back to the OS, so the next peak is measured from a clean floor."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(forward: Forward, batch: Any, device: str | torch.device) -> int | None:
    """Bytes one forward adds at its peak (activations and workspaces; weights excluded).

    CUDA: the caching allocator's exact peak. CPU (Linux): resident memory sampled every
    0.5 ms from /proc, after returning the free heap to the OS: an estimate, good to a few MB.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            forward(batch)
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if not os.path.exists("/proc/self/statm"):
        return None
    gc.collect()
    _malloc_trim()
    base = peak = _rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with torch.inference_mode():
        forward(batch)
    done.set()
    sampler.join()
    return max(0, peak - base)


# ---- the interleaved run ----------------------------------------------------------------------
