"""What an operator can tune in ``vitkit serve``, its defaults, and the checks made before start-up.

The memory defaults come from measurement (BENCHMARKS.md, "Serving under hostile load"): through
the upload processor, decoding costs at most ``WORST_BYTES_PER_PIXEL`` bytes of peak memory per
pixel (a 16-bit grey PNG, the worst of PNG, RGBA PNG, GIF, TIFF, WebP and JPEG measured), so
the pixel budget bounds what decoding can take at once, whatever clients send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vitkit.errors import ServeSettingsError
from vitkit.images.fetch import FetchPolicy

# 25 megapixels: a 6000x4000 (24 MP) camera photo fits, and one image decodes in at most
# 25e6 x 22 B = 550 MB. PIL's own cap (89.5 MP) let one 107 KB PNG take 1.2 GB.
DEFAULT_MAX_PIXELS = 25_000_000
WORST_BYTES_PER_PIXEL = 22
MALLOC_ARENAS = 2  # glibc arenas `vitkit serve` lets its threads share (cli/serve.py)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the image bytes
MiB = 1024 * 1024


@dataclass
class ServeSettings:
    """Everything ``vitkit serve`` lets an operator tune (see its --help)."""

    max_batch_size: int = 8
    max_batch_delay_ms: float = 5.0
    max_queue: int = 64  # requests admitted (body read) and not yet answered
    request_timeout: float = 30.0  # from admission to the answer
    max_image_bytes: int = 10 * MiB  # one request's images together
    max_pixels: int = DEFAULT_MAX_PIXELS  # one image
    decode_pixel_budget: int | None = (
        None  # pixels decoding at once, all requests (None: max_pixels)
    )
    max_files: int = 16
    decode_workers: int = 4
    upload_timeout: float = 60.0  # a body must have arrived within this
    min_upload_rate: float = 16 * 1024  # bytes/s on average, after upload_grace seconds
    upload_grace: float = 5.0
    spool_memory: int = 64 * MiB  # upload bytes kept in memory, all requests; the rest on disk
    spool_per_upload: int = 1 * MiB  # of which one upload may keep
    max_fetches: int = 256  # image_url transfers at once
    fetches_per_host: int = 8  # of which to one upstream address and port
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    warmup: bool = True
    model_name: str | None = None  # what clients see; None: from the checkpoint's config

    @property
    def max_body_bytes(self) -> int:
        return self.max_image_bytes + MULTIPART_OVERHEAD

    @property
    def pixel_budget(self) -> int:
        return self.decode_pixel_budget or self.max_pixels

    def memory_bound(self) -> int:
        """Bytes the service may add to its idle RSS under any load (README, "Serving").

        Decoding holds at most the pixel budget at once, at ``WORST_BYTES_PER_PIXEL``; glibc may
        keep one decode's worth of freed memory per malloc arena, and ``vitkit serve`` runs its
        threads on ``MALLOC_ARENAS`` shared arenas. On top: the encoded bytes the decode threads
        hold and the uploads kept in memory. Per-connection buffers (uvicorn reads at most
        64 KiB ahead per connection) and the model's batch are not counted.
        """
        return (
            MALLOC_ARENAS * WORST_BYTES_PER_PIXEL * self.pixel_budget
            + self.decode_workers * self.max_body_bytes
            + self.spool_memory
        )

    def check(self) -> None:
        """Raise ``ServeSettingsError`` for the first setting that cannot work."""
        at_least_one = {
            "--max-batch-size": self.max_batch_size,
            "--max-queue": self.max_queue,
            "--max-image-bytes": self.max_image_bytes,
            "--max-pixels": self.max_pixels,
            "--decode-workers": self.decode_workers,
            "--max-fetches": self.max_fetches,
        }
        for option, value in at_least_one.items():
            if value < 1:
                raise ServeSettingsError(f"{option} {value}: must be at least 1")
        positive = {
            "--request-timeout": self.request_timeout,
            "--upload-timeout": self.upload_timeout,
            "--fetch-timeout": self.fetch_policy.read_timeout,
        }
        for option, seconds in positive.items():
            if not seconds > 0:
                raise ServeSettingsError(f"{option} {seconds:g}: must be more than 0 seconds")
        if self.max_batch_delay_ms < 0 or self.min_upload_rate < 0:
            raise ServeSettingsError(
                "--max-batch-delay-ms and --min-transfer-rate cannot be negative"
            )
        if self.pixel_budget < self.max_pixels:
            raise ServeSettingsError(
                f"--decode-pixel-budget {self.pixel_budget:,} is under --max-pixels "
                f"{self.max_pixels:,}: the largest image allowed could never be decoded; "
                "raise the budget or lower --max-pixels"
            )
