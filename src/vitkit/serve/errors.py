"""Every failure the server can meet, as ``{"error": code, "detail": text}`` with the right status.

Under ``/v2`` (the Open Inference Protocol) the body is the protocol's: ``{"error": text}``
(the message, which clients such as tritonclient show), with the same ``code`` beside it.

Library errors (``vitkit.errors``) carry no HTTP knowledge beyond ``FetchError.http_status``;
this table decides how the server answers them. Bad input is always a 4xx (or a 502/504 when a
URL the client gave us fails upstream); a 500 means a bug in vitkit, never in the request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from vitkit.errors import (
    FetchError,
    FetchTimeoutError,
    FetchTooLargeError,
    ImageDecodeError,
    ImageTooLargeError,
    NoClassificationHeadError,
    UnsupportedImageError,
    URLNotAllowedError,
    VitkitError,
)

log = logging.getLogger("vitkit.serve")


class ServiceError(VitkitError):
    """An error the server raises itself; the class says status, code and extra headers."""

    status = 400
    code = "bad_request"
    retry_after: int | None = None
    close = False  # answer with Connection: close


class BadInput(ServiceError):
    pass


class MissingField(ServiceError):
    status = 422
    code = "missing_field"


class RequestTooLarge(ServiceError):
    status = 413
    code = "request_too_large"
    close = True  # the rest of the body is not read: the connection cannot carry another request


class UploadTooSlow(ServiceError):
    status = 408
    code = "upload_too_slow"
    close = True


class Overloaded(ServiceError):
    status = 503
    code = "overloaded"
    retry_after = 1


class NotReady(ServiceError):
    status = 503
    code = "not_ready"
    retry_after = 5


class ClientDisconnected(Exception):
    """The client hung up before its request body had arrived (not an error of ours)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"client hung up after {received:,} bytes of its request body")
        self.received = received


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"


class DeadlineExceeded(ServiceError):
    status = 504
    code = "deadline_exceeded"


# Most specific first: the first class the error is an instance of decides.
_LIBRARY_ERRORS: list[tuple[type[Exception], int, str]] = [
    (URLNotAllowedError, 400, "url_not_allowed"),
    (FetchTooLargeError, 413, "upstream_too_large"),
    (FetchTimeoutError, 504, "upstream_timeout"),
    (ImageTooLargeError, 413, "image_too_large"),
    (UnsupportedImageError, 415, "unsupported_image"),
    (ImageDecodeError, 400, "bad_image"),
    (NoClassificationHeadError, 400, "no_classification_head"),
]


def status_and_code(error: Exception) -> tuple[int, str]:
    if isinstance(error, ServiceError):
        return error.status, error.code
    for kind, status, code in _LIBRARY_ERRORS:
        if isinstance(error, kind):
            return status, code
    if isinstance(error, FetchError):  # BadURLError (400), unreachable / HTTP errors (502)
        status = error.http_status
        return status, "bad_url" if status == 400 else "upstream_error"
    if isinstance(error, VitkitError):
        return 400, "bad_request"
    return 500, "internal_error"


def error_response(
    status: int,
    code: str,
    detail: str,
    retry_after: int | None = None,
    *,
    close: bool = False,
    headers: Mapping[str, str] | None = None,
    protocol_v2: bool = False,
) -> JSONResponse:
    """The one error body: ``{"error": code, "detail": text}`` (``protocol_v2``: the Open
    Inference Protocol's ``{"error": text, "code": code}``)."""
    extra = dict(headers or {})
    if retry_after is not None:
        extra["Retry-After"] = str(retry_after)
    if close:
        extra["Connection"] = "close"
    body = {"error": detail, "code": code} if protocol_v2 else {"error": code, "detail": detail}
    return JSONResponse(body, status_code=status, headers=extra)


def is_v2(request: Request) -> bool:
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")


CLIENT_CLOSED_REQUEST = 499  # nginx's code for a client that hung up: counted, never sent


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this request's path (a path may have several routes)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""

    @app.exception_handler(VitkitError)
    async def vitkit_error(request: Request, error: VitkitError) -> JSONResponse:
        status, code = status_and_code(error)
        v2 = is_v2(request)
        if isinstance(error, ServiceError):
            return error_response(
                status, code, str(error), error.retry_after, close=error.close, protocol_v2=v2
            )
        return error_response(status, code, str(error), protocol_v2=v2)

    @app.exception_handler(ClientDisconnected)
    async def client_gone(request: Request, error: ClientDisconnected) -> Response:
        # The client's choice, not a failure of ours: one line, and a 499 in /metrics.
        log.info("%s %s: %s", request.method, request.url.path, error)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        missing = any(problem.get("type") == "missing" for problem in problems)
        detail = "; ".join(
            f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', '')}"
            for problem in problems
        )
        code = "missing_field" if missing else "invalid_request"
        return error_response(422, code, detail, protocol_v2=is_v2(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        phrase = (
            HTTPStatus(error.status_code).phrase
            if error.status_code in HTTPStatus._value2member_map_
            else "error"
        )
        code = phrase.lower().replace(" ", "_").replace("-", "_")
        headers = dict(error.headers or {})
        if error.status_code == 405:  # Starlette names only the first route's methods
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(
            error.status_code, code, str(error.detail), headers=headers, protocol_v2=is_v2(request)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "internal_error",
            f"{type(error).__name__}: a bug in vitkit",
            protocol_v2=is_v2(request),
        )
