"""`vitkit serve`: run the HTTP prediction service (FastAPI + uvicorn).

The options are generated from ``vitkit.serve.settings.ServeSettings`` and the load settings
every command shares (``LoadSettings``, its ``--model`` aside: serve takes several); the checks
and the process set-up live in ``vitkit.serve.process``.
"""

from __future__ import annotations

import argparse
from typing import Any

from vitkit.cli._loading import ENTRY_POINT_DEFAULTS
from vitkit.cli._options import add_options, config_from_args
from vitkit.inference.settings import LoadSettings
from vitkit.serve.settings import ServeSettings

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
    parser = subparsers.add_parser(
        "serve",
        help="serve predictions over HTTP (several models, keys, rate limits, Open Inference "
        "Protocol, dynamic batching, safe URL fetching, metrics)",
        description="Serve ViT classifiers over HTTP with FastAPI + uvicorn.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, ServeSettings)
    add_options(parser, LoadSettings, exclude=("model",), defaults=ENTRY_POINT_DEFAULTS)
    parser.set_defaults(func=run, settings=settings)


def settings(args: argparse.Namespace) -> ServeSettings:
    """What the command hands the library: the ServeSettings, the models' LoadSettings in it."""
    load: LoadSettings = config_from_args(LoadSettings, args)
    served: ServeSettings = config_from_args(ServeSettings, args, load=load)
    return served


def run(args: argparse.Namespace) -> int:
    from vitkit.serve.process import run_service

    return run_service(settings(args))
