"""`vitkit push`: upload a model directory (weights, config, model card) to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from typing import Any

from vitkit.cli._options import add_options, config_from_args
from vitkit.training.push import PushSettings

EPILOG = """\
examples:
  hf auth login                                   # once: store a token with write access
  vitkit push runs/tiles/best my-lab/vit-tiles    # the best model of a training run
  vitkit push runs/tiles/best my-lab/vit-tiles --private --revision experiment-2

The directory's README.md (the model card vitkit writes with every trained model) becomes the
repository's page: its model-index metadata shows the test results on the Hub.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a model directory to the Hugging Face Hub",
        description="Upload a model directory (weights, config, model card) to a Hub repository, "
        "creating it if needed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", metavar="DIR", help="model directory to upload")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, owner/name")
    add_options(parser, PushSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitkit.training.push import push

    settings = config_from_args(PushSettings, args, directory=args.directory, repo_id=args.repo_id)
    print(push(settings))
    return 0
