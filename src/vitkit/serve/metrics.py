"""Prometheus metrics for the server, and the ASGI middleware that records every request.

Each app gets its own registry (so several apps can live in one process, as in tests). Every
label has a bounded set of values, whatever clients send: routes by their template
(``/v1/predict``), never the raw path (unknown paths count as ``unmatched``); methods from the
HTTP standard, anything else as ``other``; status codes are the server's own (499 = the client
hung up before its body arrived).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vitkit_http_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vitkit_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "vitkit_batch_size",
            "Images per forward pass of the model.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "vitkit_inference_duration_seconds",
            "Time of one batched forward pass (incl. softmax/top-k or pooling).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "vitkit_queue_depth",
            "Jobs waiting for the model worker.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "vitkit_requests_in_flight",
            "Prediction requests admitted and not yet answered (decode, queue or model).",
            registry=self.registry,
        )

        self.by_key = Counter(
            "vitkit_http_requests_by_key_total",
            "Requests to keyed routes by API key name ('none': no right key) and status.",
            ["key", "status"],
            registry=self.registry,
        )

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.inference.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it would buffer streaming bodies)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app dies before answering, that is what the client sees
        method = scope.get("method", "")
        method = method if method in METHODS else "other"

        async def send_and_watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)
