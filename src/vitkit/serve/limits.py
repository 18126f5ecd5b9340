"""A request-body cap enforced while the body streams in, before anything is buffered.

A declared ``Content-Length`` over the cap is refused before reading a byte. A chunked body is
counted as it arrives and refused the moment it passes the cap (the handler reading it gets
``RequestTooLarge``, which the error handlers turn into a 413).
"""

from __future__ import annotations

from typing import Any

from vitkit.serve.errors import RequestTooLarge, error_response


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(
                413,
                "request_too_large",
                f"request body of {int(declared):,} bytes is over the {limit:,}-byte limit "
                "(server option --max-image-bytes)",
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(
                        f"request body is over the {limit:,}-byte limit "
                        "(server option --max-image-bytes)"
                    )
            return message

        await self.app(scope, counted_receive, send)
