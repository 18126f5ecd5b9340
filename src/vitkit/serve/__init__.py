"""`vitkit serve`: the HTTP prediction service.

``create_app(models, ServeSettings(...))`` builds the ASGI app (``vitkit.serve.app``);
``vitkit.serve.process.run_service(settings)`` runs it the way ``vitkit serve`` does. Importing
``vitkit.serve.settings`` is cheap (the CLI's --help reads it); ``create_app`` and ``Service``
import FastAPI and torch when first used.

How it is built:

- one ``ModelRunner`` per served model (``vitkit.serve.runner``): its classifier, its decode
  threads and its micro-batcher. Admission, the pixel budget, upload spools and URL fetch limits
  are shared (``vitkit.serve.service``), so the memory bound grows per model only by that
  model's weights, activations and decode threads' buffers;
- every route family is a thin adapter over the runners: the seed route and /v1
  (``vitkit.serve.routes``), the Open Inference Protocol /v2 (``vitkit.serve.routes_v2``, wire
  format in ``vitkit.serve.protocol_v2``);
- in front of all of them, one middleware gives each request its id, applies API keys and rate
  limits (``vitkit.serve.access``) and writes the access log (``vitkit.serve.requestlog``).

Adding a model kind's routes (e.g. ``POST /v1/segment`` for segmentation models): write a module
in this package with

- its batcher operation: ``runner.BATCH_OPERATIONS["segment"] = run_segment``, a function
  ``(model, operation, pixels, top_k) -> one result per image`` run on the model thread;
- its routes: a function ``add_segment_routes(app, service)`` appended to
  ``app.EXTRA_ROUTES``; it picks its runners with ``service.runner(name)``, runs a request with
  ``service.run(service.body(request), work)`` (arrival, admission, deadline) and, in ``work``,
  ``runner.decode(uploads, deadline)`` then ``runner.batcher.submit(("segment",), pixels,
  deadline=deadline)``; errors are ``vitkit.serve.errors`` classes (the status follows);
- v2 outputs: a function in ``routes_v2.EXTRA_OUTPUTS`` (name -> ``(runner, request, pixels,
  deadline) -> Output``) and its metadata in ``routes_v2.EXTRA_METADATA``;

and import the module from ``vitkit.serve.app`` (one line). The keys, limits, request ids,
metrics and OpenAPI documentation of access apply to the new routes without more code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitkit.serve.settings import ServeSettings

if TYPE_CHECKING:
    from vitkit.serve.app import create_app
    from vitkit.serve.service import Service

__all__ = ["ServeSettings", "Service", "create_app"]


def __getattr__(name: str) -> Any:
    """``create_app`` and ``Service`` on first use (they import FastAPI and torch)."""
    if name == "create_app":
        from vitkit.serve.app import create_app

        return create_app
    if name == "Service":
        from vitkit.serve.service import Service

        return Service
    raise AttributeError(f"module 'vitkit.serve' has no attribute {name!r}")
