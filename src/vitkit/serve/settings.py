"""What an operator can tune in ``vitkit serve``: ``ServeSettings``, its defaults, and the checks
made before start-up. Each field is also its command-line option (``vitkit.options.option``):
``vitkit serve --help`` is generated from this class, so every default is written here once.

The memory defaults come from measurement (BENCHMARKS.md, "Serving under hostile load"): through
the upload processor, decoding costs at most ``WORST_BYTES_PER_PIXEL`` bytes of peak memory per
pixel (a 16-bit grey PNG, the worst of PNG, RGBA PNG, GIF, TIFF, WebP and JPEG measured), so
the pixel budget bounds what decoding can take at once, whatever clients send.

Torch-free: ``vitkit --help`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from vitkit.errors import ServeSettingsError
from vitkit.inference.settings import MODEL_HELP, LoadSettings
from vitkit.options import option

# 25 megapixels: a 6000x4000 (24 MP) camera photo fits, and one image decodes in at most
# 25e6 x 22 B = 550 MB. PIL's own cap (89.5 MP) let one 107 KB PNG take 1.2 GB. A JPEG over it
# (a 48 MP phone photo) is decoded at the DCT scale that fits instead.
DEFAULT_MAX_PIXELS = 25_000_000
WORST_BYTES_PER_PIXEL = 22
MALLOC_ARENAS = 2  # glibc arenas `vitkit serve` lets its threads share (serve/process.py)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the image bytes
MiB = 1024 * 1024
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

NETWORK, BATCHING, LIMITS, URLS, ACCESS = (
    "network",
    "batching",
    "limits (what one client may cost)",
    "image URLs",
    "access (API keys and rate limits)",
)


@dataclass
class ServeSettings:
    """Everything ``vitkit serve`` lets an operator tune (see its --help).

    ``models`` (``--model``, repeatable): ``NAME=PATH`` or one ``PATH``; each model loads with
    ``load`` (the ``LoadSettings`` every command shares: device, precision, threads, head...)
    and its own checkpoint. ``model_sources()`` says which, by name.
    """

    models: list[str] = option(
        help=MODEL_HELP + "; NAME=PATH names it for clients (?model=NAME, /v2/models/NAME); "
        "repeat to serve several, the first is the default",
        group="model",
        flags=("--model", "-m"),
        metavar="[NAME=]PATH",
        repeat=True,
        default_factory=list,
        default_help="$VITKIT_MODEL, else google/vit-base-patch16-224",
    )
    model_name: str | None = option(
        None,
        "the name clients see for a single model given as a path",
        group="model",
        default_help="the hub id, else the architecture; never the checkpoint's path",
    )
    # how every model loads (its checkpoint aside); the CLI fills it from the shared options
    load: LoadSettings = field(default_factory=LoadSettings)
    # ---- network and logs
    host: str = option("127.0.0.1", "address to bind", group=NETWORK)
    port: int = option(8000, "port to listen on", group=NETWORK)
    graceful_timeout: float = option(
        30.0, "seconds to let in-flight requests finish after SIGTERM", group=NETWORK
    )
    log_level: str = option("info", "log level", group=NETWORK, choices=LOG_LEVELS)
    log_format: str = option(
        "text",
        "log lines as text, or one JSON object per line (the access log included), each "
        "with its request's X-Request-ID",
        group=NETWORK,
        choices=LOG_FORMATS,
    )
    # ---- batching
    max_batch_size: int = option(8, "images per forward pass", group=BATCHING)
    max_batch_delay_ms: float = option(
        5.0, "how long the first request of a batch waits for company (ms)", group=BATCHING
    )
    decode_workers: int = option(
        4, "threads per model that decode and preprocess images", group=BATCHING
    )
    warmup: bool = option(
        True, "warm-up passes before /readyz turns 200", group=BATCHING, flags=("--no-warmup",)
    )
    # ---- limits
    max_queue: int = option(
        64,
        "requests admitted (body received) and not yet answered, all models together, before "
        "new ones get 503 + Retry-After",
        group=LIMITS,
    )
    request_timeout: float = option(
        30.0,
        "deadline per request in seconds from admission (the body or the image URL has "
        "arrived); 504 after it",
        group=LIMITS,
    )
    max_image_bytes: int = option(
        10 * MiB,
        "largest request body (all its images together) and image download, in bytes",
        group=LIMITS,
    )
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "largest image decoded in full, in pixels, checked before decoding; a JPEG over it is "
        "decoded at 1/2, 1/4 or 1/8 scale if that fits (the answer says decoded_scale)",
        group=LIMITS,
    )
    decode_pixel_budget: int | None = option(
        None,
        "pixels decoding at once across all requests and models; bounds decode memory at "
        f"~{WORST_BYTES_PER_PIXEL} bytes per pixel",
        group=LIMITS,
        default_help="--max-pixels",
    )
    max_files: int = option(16, "images in one request", group=LIMITS)
    upload_timeout: float = option(
        60.0, "seconds a request body may take to arrive; 408 after it", group=LIMITS
    )
    min_transfer_rate: float = option(
        16 * 1024,
        "bytes/s an upload or image download must average after its first --upload-grace "
        "seconds, else it is cut off (408 / 504; 0 turns the check off)",
        group=LIMITS,
    )
    upload_grace: float = option(5.0, "seconds before --min-transfer-rate applies", group=LIMITS)
    spool_memory: int = option(
        64 * MiB,
        "upload bytes kept in memory, all requests; the rest go to temporary files",
        group=LIMITS,
    )
    spool_per_upload: int = option(
        1 * MiB, "of --spool-memory, what one upload may keep", group=LIMITS
    )
    # ---- image URLs
    fetch_timeout: float = option(
        10.0, "connect/read timeout for image_url fetches in seconds", group=URLS
    )
    max_fetches: int = option(256, "image_url transfers at once", group=URLS)
    fetches_per_host: int = option(
        8, "of --max-fetches, transfers to one upstream address and port", group=URLS
    )
    # ---- access
    api_keys: str | None = option(
        None,
        "file of API keys, one per line, 'name:key' or just 'key'; every route but the probes "
        "and the web page then needs 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
        group=ACCESS,
        metavar="FILE",
        default_help="no keys: open to whoever reaches the port",
    )
    rate_limit: str | None = option(
        None,
        "requests per key (per client address without keys), e.g. 10/s or 600/min; "
        "over it: 429 + Retry-After",
        group=ACCESS,
        metavar="N/UNIT",
        default_help="no limit",
    )
    burst: int | None = option(
        None,
        "requests a key may make at once above --rate-limit",
        group=ACCESS,
        default_help="half a second's worth of --rate-limit, at least 1",
    )
    key_failures: str = option(
        "10/min",
        "failed key attempts allowed per client address (then 429), so keys cannot be guessed "
        "at line rate",
        group=ACCESS,
        metavar="N/UNIT",
    )
    open_metrics: bool = option(False, "let /metrics answer without a key", group=ACCESS)
    open_docs: bool = option(
        False, "let /docs and /openapi.json answer without a key", group=ACCESS
    )
    # A vitkit.images.fetch.FetchPolicy for library users who need one the options cannot say
    # (a resolver, a TLS context). Typed Any: the fetch module (httpx) loads only when used.
    custom_fetch_policy: Any = field(default=None)

    @property
    def max_body_bytes(self) -> int:
        return self.max_image_bytes + MULTIPART_OVERHEAD

    @property
    def pixel_budget(self) -> int:
        return self.decode_pixel_budget or self.max_pixels

    @property
    def fetch_policy(self) -> Any:
        """How ``image_url`` is fetched (a ``FetchPolicy``): these settings' caps, timeouts and
        address rules."""
        from vitkit.images.fetch import FetchPolicy, hosts_from

        if self.custom_fetch_policy is not None:
            return self.custom_fetch_policy
        return FetchPolicy(
            max_bytes=self.max_image_bytes,
            connect_timeout=self.fetch_timeout,
            read_timeout=self.fetch_timeout,
            total_timeout=min(self.request_timeout, 3 * self.fetch_timeout),
            min_rate=max(self.min_transfer_rate, 0.0),
            rate_grace=self.upload_grace,
            allow_private=self.load.allow_private_urls,
            allowlist=hosts_from(self.load.allow_hosts),
        )

    def _check_no_idle_options(self) -> None:
        """An option that would change nothing with the others given is refused, not ignored."""
        guarded = self.api_keys is not None or self.rate_limit is not None
        for flag, value in (("--open-metrics", self.open_metrics), ("--open-docs", self.open_docs)):
            if value and not guarded:
                raise ServeSettingsError(
                    f"{flag} needs --api-keys or --rate-limit: without them every route is open"
                )
        default_failures = next(f.default for f in fields(self) if f.name == "key_failures")
        if self.key_failures != default_failures and self.api_keys is None:
            raise ServeSettingsError("--key-failures needs --api-keys: it limits wrong keys")
        if self.model_name is not None and None not in self.model_sources():
            raise ServeSettingsError(
                f"--model-name {self.model_name}: it names a single model given as a path; "
                "name each model with --model NAME=PATH instead"
            )

    def model_sources(self) -> dict[str | None, LoadSettings]:
        """Each model's load settings by the name clients use (None: one model, named from
        ``model_name`` or its checkpoint); ``ServeSettingsError`` for names that clash."""
        if not self.models:
            return {None: self.load}
        sources: dict[str | None, LoadSettings] = {}
        for text in self.models:
            name, sep, path = text.partition("=")
            named = bool(sep and name and path) and "/" not in name
            key = name if named else None
            if key in sources or (sources and key is None) or (None in sources):
                raise ServeSettingsError(
                    f"--model {text}: with several models, give each its own name (NAME=PATH)"
                )
            sources[key] = self.load.replace(model=path if named else text)
        return sources

    def memory_bound(self, models: int = 1) -> int:
        """Bytes the service may add to its idle RSS under any load (docs/serving.md).

        Decoding holds at most the pixel budget at once, all models together, at
        ``WORST_BYTES_PER_PIXEL``; glibc may keep one decode's worth of freed memory per malloc
        arena, and ``vitkit serve`` runs its threads on ``MALLOC_ARENAS`` shared arenas. On top:
        the encoded bytes each model's decode threads hold and the uploads kept in memory.
        Per-connection buffers (uvicorn reads at most 64 KiB ahead per connection) and the
        models' batches are not counted.
        """
        return (
            MALLOC_ARENAS * WORST_BYTES_PER_PIXEL * self.pixel_budget
            + models * self.decode_buffers_bytes
            + self.spool_memory
        )

    @property
    def decode_buffers_bytes(self) -> int:
        """Encoded bytes one model's decode threads may hold at once."""
        return self.decode_workers * self.max_body_bytes

    def check(self) -> None:
        """Raise ``ServeSettingsError`` for the first setting that cannot work."""
        from vitkit.serve.access import parse_rate  # torch-free, FastAPI-free

        at_least_one = {
            "--max-batch-size": self.max_batch_size,
            "--max-queue": self.max_queue,
            "--max-image-bytes": self.max_image_bytes,
            "--max-pixels": self.max_pixels,
            "--max-files": self.max_files,
            "--decode-workers": self.decode_workers,
            "--max-fetches": self.max_fetches,
            "--fetches-per-host": self.fetches_per_host,
        }
        for option_name, value in at_least_one.items():
            if value < 1:
                raise ServeSettingsError(f"{option_name} {value}: must be at least 1")
        positive = {
            "--request-timeout": self.request_timeout,
            "--upload-timeout": self.upload_timeout,
            "--fetch-timeout": self.fetch_timeout,
        }
        for option_name, seconds in positive.items():
            if not seconds > 0:
                raise ServeSettingsError(f"{option_name} {seconds:g}: must be more than 0 seconds")
        for option_name, number in (
            ("--max-batch-delay-ms", self.max_batch_delay_ms),
            ("--min-transfer-rate", self.min_transfer_rate),
            ("--graceful-timeout", self.graceful_timeout),
            ("--upload-grace", self.upload_grace),
            ("--spool-memory", self.spool_memory),
            ("--spool-per-upload", self.spool_per_upload),
        ):
            if number < 0:
                raise ServeSettingsError(f"{option_name} {number:g}: cannot be negative")
        if not 0 <= self.port <= 65535:
            raise ServeSettingsError(f"--port {self.port}: choose a port in 0..65535")
        if self.pixel_budget < self.max_pixels:
            raise ServeSettingsError(
                f"--decode-pixel-budget {self.pixel_budget:,} is under --max-pixels "
                f"{self.max_pixels:,}: the largest image allowed could never be decoded; "
                "raise the budget or lower --max-pixels"
            )
        self._check_no_idle_options()
        if self.burst is not None and self.burst < 1:
            raise ServeSettingsError(f"--burst {self.burst}: must be at least 1")
        if self.burst is not None and self.rate_limit is None:
            raise ServeSettingsError("--burst needs --rate-limit (the rate it bursts above)")
        if self.rate_limit is not None:
            parse_rate(self.rate_limit, "--rate-limit")
        parse_rate(self.key_failures, "--key-failures")
        self.model_sources()
