"""`vitkit serve`: the HTTP prediction service (FastAPI app, micro-batcher, metrics, web page).

``create_app(classifier_or_loader, ServeSettings(...))`` builds the ASGI app; the CLI runs it
with uvicorn. Importing this package imports FastAPI and torch, so only the serve command does.
"""

from vitkit.serve.app import ServeSettings, Service, create_app

__all__ = ["ServeSettings", "Service", "create_app"]
