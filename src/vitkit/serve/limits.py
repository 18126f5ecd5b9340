"""What a request may cost: body size, upload pace, decode memory, upload memory.

- ``BodyLimitMiddleware``: a declared ``Content-Length`` over the cap is refused before reading
  a byte, on every route.
- ``body_chunks``: the body as it streams in, under the byte cap (a chunked body is refused the
  moment it passes it), a total deadline and a minimum average rate after a grace period. A
  connection trickling a byte a second is answered 408 within the grace period instead of
  holding anything for the request timeout; a client that hangs up raises ``ClientDisconnected``.
- ``PixelBudget``: pixels being decoded at once, across requests; a decode waits (first come,
  first served) until its image's pixels fit. Peak decode memory is budget x bytes per pixel.
- ``SpoolBudget``: upload bytes held in memory across requests; past it, uploads go to disk.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vitkit.serve.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    RequestTooLarge,
    UploadTooSlow,
    error_response,
)

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if scope["type"] == "http" and declared.isdigit() and int(declared) > self.max_body_bytes:
            response = error_response(
                413,
                "request_too_large",
                f"request body of {int(declared):,} bytes is over the {self.max_body_bytes:,}-"
                "byte limit (server option --max-image-bytes)",
                close=True,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    timeout: float  # the whole body within this many seconds
    min_rate: float  # bytes/s averaged since the request started, checked after grace
    grace: float

    def wait_allowed(self, received: int, elapsed: float) -> float:
        """Seconds the next chunk may take before a limit is broken."""
        left = self.timeout - elapsed
        if self.min_rate > 0:  # received >= min_rate x (elapsed - grace) stops holding at:
            left = min(left, self.grace + received / self.min_rate - elapsed)
        return left


async def body_chunks(receive: Receive, limits: UploadLimits) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive, under ``limits`` (see the module docstring)."""
    start, received = time.monotonic(), 0
    while True:
        elapsed = time.monotonic() - start
        try:
            message = await asyncio.wait_for(
                receive(), timeout=max(limits.wait_allowed(received, elapsed), 0.0)
            )
        except TimeoutError:
            raise UploadTooSlow(_too_slow(received, time.monotonic() - start, limits)) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected(received)
        chunk: bytes = message.get("body", b"")
        received += len(chunk)
        if received > limits.max_bytes:
            raise RequestTooLarge(
                f"request body is over the {limits.max_bytes:,}-byte limit "
                "(server option --max-image-bytes)"
            )
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _too_slow(received: int, elapsed: float, limits: UploadLimits) -> str:
    if elapsed >= limits.timeout:
        return (
            f"the request body did not arrive within {limits.timeout:g} s "
            "(server option --upload-timeout)"
        )
    return (
        f"the request body came too slowly: {received:,} bytes in {elapsed:.1f} s, under "
        f"{limits.min_rate:,.0f} bytes/s (server option --min-transfer-rate)"
    )


class PixelBudget:
    """Pixels decoding at once, shared by the decode threads; waiters are served in order."""

    def __init__(self, pixels: int) -> None:
        self.capacity = pixels
        self.free = pixels
        self._turns: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, deadline: float) -> Iterator[None]:
        """Hold ``pixels`` of the budget (at most all of it) while decoding; DeadlineExceeded
        if they are not free before ``deadline`` (time.monotonic())."""
        need = min(pixels, self.capacity)
        turn = object()
        with self._changed:
            self._turns.append(turn)
            try:
                while self._turns[0] is not turn or self.free < need:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._changed.wait(left):
                        raise DeadlineExceeded(
                            "the request deadline passed while waiting to decode (busy with "
                            "large images; server option --decode-pixel-budget)"
                        )
            finally:
                self._turns.remove(turn)
                self._changed.notify_all()
            self.free -= need
        try:
            yield
        finally:
            with self._changed:
                self.free += need
                self._changed.notify_all()


class SpoolBudget:
    """Upload bytes kept in memory, all requests together: each upload asks for ``per_upload``
    bytes of memory and gets them, or 0 (straight to a temporary file) when the total is spent."""

    def __init__(self, total: int, per_upload: int) -> None:
        self.total = total
        self.per_upload = min(per_upload, total)
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self) -> int:
        with self._lock:
            grant = self.per_upload if self.used + self.per_upload <= self.total else 0
            self.used += grant
            return grant

    def release(self, granted: int) -> None:
        with self._lock:
            self.used -= granted
