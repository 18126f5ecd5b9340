"""Request IDs, the access log, and the log formats (text or one JSON object per line).

``RequestLogMiddleware`` gives every HTTP request an id: the client's ``X-Request-ID`` when it is
a sane token (at most 128 characters of ``A-Z a-z 0-9 . _ : -``, so it cannot forge log lines),
else a new one. The id is returned in the response's ``X-Request-ID``, and held in a context
variable that ``RequestIdFilter`` adds to every log record made while the request runs (the
decode threads run in a copy of the request's context, see ``ModelRunner.in_thread``). When the
answer is sent, one access-log line names method, path, status, time, client address and, with
API keys, the key's name (never the key; query strings are left out: they may carry URLs).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from vitkit.serve.access import AccessGate, Verdict, client_address, retry_after_header
from vitkit.serve.errors import error_response

access_log = logging.getLogger("vitkit.access")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("vitkit_request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
CLIENT_STATE = "vitkit.client"  # scope["state"] key: who the access gate says the client is


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and the access
    log's fields (method, path, status, duration_ms, client, key) where present."""

    FIELDS = ("method", "path", "status", "duration_ms", "client", "key")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


TEXT_FORMAT = "%(levelname)s:     [%(request_id)s] %(name)s: %(message)s"


def log_handler(log_format: str) -> logging.Handler:
    """A stderr handler in ``log_format`` ("text" or "json") that knows request ids."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


class RequestLogMiddleware:
    """Request id in and out, the access gate, and the access-log line (pure ASGI: bodies
    stream through untouched)."""

    def __init__(self, app: Any, gate: AccessGate, metrics: Any) -> None:
        self.app = app
        self.gate = gate
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        token = request_id.set(given if _SANE_ID.match(given) else uuid.uuid4().hex)
        start, status = time.perf_counter(), 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                extra = [(b"x-request-id", request_id.get().encode("latin-1"))]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        path = scope.get("path", "")
        verdict = self.gate.check(path, headers, client_address(scope))
        scope.setdefault("state", {})[CLIENT_STATE] = verdict.client
        try:
            if verdict.allowed:
                await self.app(scope, receive, send_with_id)
            else:
                await refusal(verdict, path)(scope, receive, send_with_id)
        finally:
            self._log(scope, verdict, status, time.perf_counter() - start)
            request_id.reset(token)

    def _log(self, scope: dict[str, Any], verdict: Verdict, status: int, seconds: float) -> None:
        key = verdict.client if self.gate.keys is not None and verdict.allowed else None
        if self.gate.keys is not None and not self.gate.is_open(scope.get("path", "")):
            self.metrics.by_key.labels(key or "none", str(status)).inc()
        access_log.info(
            '%s "%s %s" %d %.1f ms%s',
            client_address(scope),
            scope.get("method", ""),
            scope.get("path", ""),
            status,
            1000 * seconds,
            f" key={key}" if key else "",
            extra={
                "method": scope.get("method", ""),
                "path": scope.get("path", ""),
                "status": status,
                "duration_ms": round(1000 * seconds, 2),
                "client": client_address(scope),
                "key": key,
            },
        )


def refusal(verdict: Verdict, path: str) -> Any:
    """The 401 or 429 answer for a refused request (in the v2 protocol's shape under /v2)."""
    headers = {}
    if verdict.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="vitkit"'
    if verdict.retry_after > 0:
        headers["Retry-After"] = retry_after_header(verdict.retry_after)
    return error_response(
        verdict.status,
        verdict.code,
        verdict.detail,
        headers=headers,
        protocol_v2=path == "/v2" or path.startswith("/v2/"),
    )
