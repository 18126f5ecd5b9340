"""`vitkit serve`: run the HTTP prediction service (FastAPI + uvicorn).

The options are generated from ``vitkit.serve.settings.ServeSettings`` (and the model's load
settings); the process set-up lives in ``vitkit.serve.process``.
"""

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
from vitkit.cli._options import add_options, config_from_args

EPILOG = """\
examples:
  vitkit serve --model google/vit-base-patch16-224
  vitkit serve --model photos=./vit-photos --model tissue=./vit-histology   # two models
  vitkit serve --model ./ckpt --api-keys keys.txt --rate-limit 10/s --burst 20
  vitkit serve --model ./ckpt --allow-host images.internal.example   # fetch from one internal host
  vitkit serve --model runs/tags/best --tta d4 --threshold 0.4      # a multi-label model, TTA

endpoints:
  GET  /predict_image_class?image_url=URL   {"predicted_class", "score", "predictions"}
  POST /predict_image_class                 multipart field "image", same answer
  POST /v1/predict?top_k=5&model=NAME       multipart files or a raw image body
  POST /v1/embed?pool=cls|mean|pooler       pooled embeddings
  POST /v1/explain?method=rollout|cls       attention map JSON, or a PNG overlay (format=png)
  GET  /v1/models  /v1/model?model=NAME     the models, their labels and memory
  GET  /v2  /v2/health/{live,ready}  /v2/models/NAME[/ready]  POST /v2/models/NAME/infer
                                            the Open Inference Protocol (tritonclient, KServe)
  GET  /healthz  /readyz  /metrics  /docs  /  (a web page to try it)

URLs are fetched only from public addresses unless --allow-private-urls or --allow-host says
otherwise; stop the server with Ctrl-C or SIGTERM (requests in flight are finished first).

memory: peak RSS stays under the idle RSS + 2 x 22 B x --decode-pixel-budget + per model
--decode-workers x --max-image-bytes + 64 MiB of in-memory uploads (docs/serving.md); with the
defaults about +1.2 GB for one model, whatever clients send. Settings that cannot work are
refused at start-up.
"""


def register(subparsers: Any) -> None:
    from vitkit.serve.settings import ServeSettings

    parser = subparsers.add_parser(
        "serve",
        help="serve predictions over HTTP (several models, keys, rate limits, Open Inference "
        "Protocol, dynamic batching, safe URL fetching, metrics)",
        description="Serve ViT classifiers over HTTP with FastAPI + uvicorn.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_group(parser.add_argument_group("model"))
    add_options(parser, ServeSettings)
    parser.add_argument(
        "--allow-host",
        dest="allow_hosts",
        action="append",
        default=[],
        metavar="HOST",
        help="host name (as written in URLs) exempt from the address check; repeatable",
    )
    parser.set_defaults(func=run)


def add_model_group(group: Any) -> None:
    group.add_argument(
        "--model",
        "-m",
        dest="models",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help=MODEL_HELP + "; NAME=PATH names it for clients; repeat to serve several (the "
        "first is the default)",
    )
    add_jpeg_draft_option(group)
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_precision_option(group)
    add_threads_option(group)
    add_head_options(group)


def model_sources(given: list[str] | None) -> dict[str | None, str]:
    """``--model`` values -> {name or None: checkpoint}; no --model: the default checkpoint."""
    from vitkit.errors import ServeSettingsError
    from vitkit.inference.classifier import default_model_name

    if not given:
        return {None: default_model_name()}
    sources: dict[str | None, str] = {}
    for text in given:
        name, sep, path = text.partition("=")
        named = bool(sep) and bool(name) and "/" not in name and bool(path)
        key, source = (name, path) if named else (None, text)
        if key in sources:
            raise ServeSettingsError(
                f"--model {text}: two models with the same name; give each NAME=PATH"
                if key
                else f"--model {text}: with several models, name each one (NAME=PATH)"
            )
        sources[key] = source
    if len(sources) > 1 and None in sources:
        raise ServeSettingsError("--model: with several models, name each one (NAME=PATH)")
    return sources


def checked(args: argparse.Namespace) -> tuple[Any, dict[str | None, str]]:
    """(the ServeSettings, the models by name), refused in one line if they cannot work."""
    from vitkit.serve.access import KeyRing
    from vitkit.serve.process import check_device, check_model_sources
    from vitkit.serve.settings import ServeSettings

    settings = config_from_args(ServeSettings, args)
    settings.check()
    if settings.api_keys:
        KeyRing.from_file(settings.api_keys)
    sources = model_sources(args.models)
    check_model_sources(sources)
    check_device(args.device, args.precision)
    return settings, sources


def run(args: argparse.Namespace) -> int:
    from vitkit.inference.classifier import load
    from vitkit.inference.heads import parse_thresholds
    from vitkit.serve.process import run_service

    settings, sources = checked(args)
    threshold = parse_thresholds(args.threshold) if args.threshold is not None else None

    def loader(source: str) -> Any:
        return lambda: load(
            source,
            device=args.device,
            precision=args.precision,
            jpeg_draft=args.jpeg_draft,
            problem_type=args.problem_type,
            threshold=threshold,
            tta=args.tta,
            threads=args.threads,
        )

    loaders = {name: loader(source) for name, source in sources.items()}
    return run_service(loaders, settings, args.device)
