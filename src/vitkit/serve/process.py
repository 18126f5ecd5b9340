"""Running the service as a process: the set-up only an entry point may make, then uvicorn.

``run_service`` is what ``vitkit serve`` calls once its options are parsed: it refuses what
could only fail later (a model path that does not exist, a device that is not there), shares
glibc's malloc arenas between threads, sets up logging (text or JSON, request ids), tunes the
process for inference, and runs uvicorn until SIGTERM / Ctrl-C. Each of these changes the whole
process, which is why it lives here and not in ``create_app``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from vitkit.checkpoints.hub import source_kind
from vitkit.errors import ServeSettingsError
from vitkit.inference.settings import LoadSettings
from vitkit.serve.requestlog import log_handler
from vitkit.serve.settings import MALLOC_ARENAS, ServeSettings


def check_startup(settings: ServeSettings) -> None:
    """Refuse, in one line each, what could only fail later: before any model loads or the port
    is taken (a setting, an API key file, a model path, the device or precision)."""
    from vitkit.serve.access import KeyRing

    settings.check()
    if settings.api_keys:
        KeyRing.from_file(settings.api_keys)
    check_model_sources(settings.model_sources())
    check_device(settings.load.device, settings.load.precision)


def check_model_sources(sources: Mapping[str | None, LoadSettings]) -> None:
    """A model that is neither an existing path nor a hub id is refused before anything loads
    (``vitkit.checkpoints.hub.source_kind`` is the one rule)."""
    for name, load in sources.items():
        source = load.source
        if source_kind(source) is None:
            shown = f"{name}={source}" if name else source
            raise ServeSettingsError(
                f"--model {shown}: no such file or directory, and not a hub id (org/name)"
            )


def check_device(device: str | None, precision: str) -> None:
    """The device and precision asked for exist here (before the port is taken)."""
    import torch

    from vitkit.inference import runtime
    from vitkit.inference.classifier import pick_device

    try:
        chosen = pick_device(device)
    except RuntimeError as error:
        raise ServeSettingsError(f"--device {device}: {error}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ServeSettingsError(
            f"--device {device}: no CUDA device is visible here; use --device cpu"
        )
    runtime.check_precision(precision, chosen)


def run_service(settings: ServeSettings) -> int:
    """Serve ``settings.models`` until stopped (SIGTERM, Ctrl-C); 1 if a model failed to load,
    else 0."""
    import uvicorn

    from vitkit.inference import runtime
    from vitkit.inference.classifier import load_settings
    from vitkit.serve.app import create_app

    check_startup(settings)
    share_malloc_arenas()
    configure_logging(settings)
    runtime.tune_process_for_inference(settings.load.device)
    failed: list[BaseException] = []

    def give_up(error: BaseException) -> None:  # a model that cannot load: exit, do not linger
        failed.append(error)
        server.should_exit = True

    def loader(load: LoadSettings) -> Callable[[], Any]:
        def loaded() -> Any:
            with runtime.loading_threads():
                return load_settings(load)

        return loaded

    models = {name: loader(load) for name, load in settings.model_sources().items()}
    app = create_app(models, settings, on_load_error=give_up)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # our handler (configure_logging): request ids, text or JSON
        access_log=False,  # vitkit.access writes it, with the request id and the key's name
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout),
    )
    server = uvicorn.Server(config)
    server.run()
    return 1 if failed else 0


def configure_logging(settings: ServeSettings) -> None:
    """One handler on the root logger in the chosen format; uvicorn's loggers propagate to it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(log_handler(settings.log_format))
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


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

    m_arena_max = -8  # <malloc.h>
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_arena_max, MALLOC_ARENAS)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
