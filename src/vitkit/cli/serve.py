"""`vitkit serve`: run the HTTP prediction service (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
from typing import Any

from vitkit.cli._common import (
    MODEL_HELP,
    add_head_options,
    add_jpeg_draft_option,
    add_precision_option,
    add_threads_option,
)

EPILOG = """\
examples:
  vitkit serve --model google/vit-base-patch16-224
  vitkit serve --model ./my-finetuned --port 9000 --max-batch-size 16 --max-batch-delay-ms 10
  vitkit serve --model ./ckpt --allow-host images.internal.example   # fetch from one internal host
  vitkit serve --model runs/tags/best --tta d4 --threshold 0.4      # a multi-label model, TTA

endpoints:
  GET  /predict_image_class?image_url=URL   {"predicted_class", "score", "predictions"}
  POST /predict_image_class                 multipart field "image", same answer
  POST /v1/predict?top_k=5                  multipart files or a raw image body
  POST /v1/embed?pool=cls|mean|pooler       pooled embeddings
  POST /v1/explain?method=rollout|cls       attention map JSON, or a PNG overlay (format=png)
  GET  /healthz  /readyz  /v1/model  /metrics  /docs  /  (a web page to try it)

URLs are fetched only from public addresses unless --allow-private-urls or --allow-host says
otherwise; stop the server with Ctrl-C or SIGTERM (requests in flight are finished first).

memory: peak RSS stays under the idle RSS + 2 x 22 B x --decode-pixel-budget + --decode-workers
x --max-image-bytes + 64 MiB of in-memory uploads (README, "Serving"); with the defaults and 2
cores about +1.2 GB, whatever clients send. Settings that cannot work are refused at start-up.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve predictions over HTTP (dynamic batching, safe URL fetching, metrics)",
        description="Serve a ViT classifier over HTTP with FastAPI + uvicorn.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_group(parser.add_argument_group("model"))
    add_network_group(parser.add_argument_group("network"))
    add_batching_group(parser.add_argument_group("batching"))
    add_limits_group(parser.add_argument_group("limits (what one client may cost)"))
    add_url_group(parser.add_argument_group("image URLs"))
    parser.set_defaults(func=run)


def add_model_group(group: Any) -> None:
    group.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    group.add_argument(
        "--model-name",
        default=None,
        help="the name clients see in /v1/model and the web page (default: the hub id, else "
        "the architecture; never the checkpoint's path)",
    )
    add_jpeg_draft_option(group)
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_precision_option(group)
    add_threads_option(group)
    add_head_options(group)


def add_network_group(group: Any) -> None:
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    group.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    group.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish after SIGTERM (default 30)",
    )
    group.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_batching_group(group: Any) -> None:
    group.add_argument("--max-batch-size", type=int, default=8, help="images per forward pass")
    group.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=5.0,
        help="how long the first request of a batch waits for company (default 5 ms)",
    )
    group.add_argument(
        "--decode-workers",
        type=int,
        default=None,
        help="threads that decode and preprocess images (default: min(8, CPU cores))",
    )


def add_limits_group(group: Any) -> None:
    group.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests admitted (body received) and not yet answered before new ones get 503 "
        "+ Retry-After (default 64)",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="deadline per request in seconds from admission (the body or the image URL has "
        "arrived); 504 after it (default 30)",
    )
    group.add_argument(
        "--max-image-bytes",
        type=int,
        default=10 * 1024 * 1024,
        help="largest request body (all its images together) and image download in bytes "
        "(default 10 MiB)",
    )
    group.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image in pixels, checked before decoding (default 25 M: a 6000x4000 "
        "photo fits)",
    )
    group.add_argument(
        "--decode-pixel-budget",
        type=int,
        default=None,
        help="pixels decoding at once across all requests; bounds decode memory at ~22 bytes "
        "per pixel (default: --max-pixels)",
    )
    group.add_argument(
        "--upload-timeout",
        type=float,
        default=60.0,
        help="seconds a request body may take to arrive; 408 after it (default 60)",
    )
    group.add_argument(
        "--min-transfer-rate",
        type=float,
        default=16 * 1024,
        help="bytes/s an upload or image download must average after its first 5 s, else it "
        "is cut off (408 / 504; default 16384; 0 turns the check off)",
    )


def add_url_group(group: Any) -> None:
    group.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let image_url reach private/loopback/link-local addresses (trusted networks only)",
    )
    group.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="host name (as written in URLs) exempt from the address check; repeatable",
    )
    group.add_argument(
        "--fetch-timeout",
        type=float,
        default=10.0,
        help="connect/read timeout for image_url fetches in seconds (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from vitkit.inference import runtime
    from vitkit.inference.classifier import load
    from vitkit.inference.heads import parse_thresholds
    from vitkit.serve import create_app

    settings = settings_from(args)
    threshold = parse_thresholds(args.threshold) if args.threshold is not None else None
    check_startup(args, settings)
    share_malloc_arenas()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    failed: list[BaseException] = []

    def give_up(error: BaseException) -> None:  # a model that cannot load: exit, do not linger
        failed.append(error)
        server.should_exit = True

    runtime.tune_process_for_inference(args.device)  # the server's process: opt in here

    def load_model() -> Any:
        with runtime.loading_threads():
            return load(
                args.model,
                device=args.device,
                precision=args.precision,
                jpeg_draft=args.jpeg_draft,
                problem_type=args.problem_type,
                threshold=threshold,
                tta=args.tta,
                threads=args.threads,
            )

    app = create_app(load_model, settings, on_load_error=give_up)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    server = uvicorn.Server(config)
    server.run()
    return 1 if failed else 0


def settings_from(args: argparse.Namespace) -> Any:
    """The ServeSettings the options ask for (checked by ``check_startup``)."""
    import os

    from vitkit.images.fetch import FetchPolicy, hosts_from
    from vitkit.serve.settings import DEFAULT_MAX_PIXELS, ServeSettings

    return ServeSettings(
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        max_image_bytes=args.max_image_bytes,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        decode_pixel_budget=args.decode_pixel_budget,
        decode_workers=args.decode_workers or min(8, os.cpu_count() or 1),
        upload_timeout=args.upload_timeout,
        min_upload_rate=args.min_transfer_rate,
        model_name=args.model_name,
        fetch_policy=FetchPolicy(
            max_bytes=args.max_image_bytes,
            connect_timeout=args.fetch_timeout,
            read_timeout=args.fetch_timeout,
            total_timeout=min(args.request_timeout, 3 * args.fetch_timeout),
            min_rate=max(args.min_transfer_rate, 0.0),
            allow_private=args.allow_private_urls,
            allowlist=hosts_from(args.allow_host),
        ),
    )


def check_startup(args: argparse.Namespace, settings: Any) -> None:
    """Refuse, in one line each, what could only fail later: before the model loads or the
    port is taken (a bad model path, device, precision, port or limit)."""
    from pathlib import Path

    from vitkit.inference import runtime
    from vitkit.inference.classifier import pick_device
    from vitkit.serve.settings import ServeSettingsError

    if not 0 <= args.port <= 65535:
        raise ServeSettingsError(f"--port {args.port}: choose a port in 0..65535")
    if args.graceful_timeout < 0:
        raise ServeSettingsError("--graceful-timeout cannot be negative")
    settings.check()
    if args.model and _looks_local(args.model) and not Path(args.model).expanduser().exists():
        raise ServeSettingsError(f"--model {args.model}: no such file or directory")
    try:
        device = pick_device(args.device)
    except RuntimeError as error:
        raise ServeSettingsError(f"--device {args.device}: {error}") from None
    if device.type == "cuda" and not _cuda_available():
        raise ServeSettingsError(
            f"--device {args.device}: no CUDA device is visible here; use --device cpu"
        )
    runtime.check_precision(args.precision, device)


def share_malloc_arenas() -> None:
    """Let the decode threads reuse each other's freed memory (glibc; elsewhere a no-op).

    glibc gives threads their own heaps ("arenas") and keeps what a thread frees for that
    thread, so four decode threads taking turns at one large image each end up holding four
    images' worth though the pixel budget lets one decode at a time: 8 concurrent 4 MP 16-bit
    PNGs with 4 decode threads left +292 MB of RSS, +114 MB with two shared arenas
    (BENCHMARKS.md, "Serving under hostile load"). A process-wide setting: only this entry
    point makes it, before any decode thread exists.
    """
    import ctypes
    import ctypes.util

    from vitkit.serve.settings import MALLOC_ARENAS  # the memory bound counts on it

    m_arena_max = -8  # <malloc.h>
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_arena_max, MALLOC_ARENAS)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _looks_local(model: str) -> bool:
    """A path rather than a hub id (org/name): starts like one, or has a file extension."""
    return model.startswith(("/", "./", "../", "~")) or model.endswith(
        (".pt", ".pth", ".bin", ".npz", ".safetensors", ".onnx")
    )


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
