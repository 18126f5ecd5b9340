"""Hand-written model options still used by ``vitkit serve``, ``bench`` and ``info`` until
their options come from their settings dataclasses; every value and default here is read
from ``vitkit.inference.settings`` (not repeated)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from vitkit.errors import VitkitError
from vitkit.inference.settings import (
    MODEL_HELP,
    PRECISIONS,
    PROBLEM_TYPES,
    TTA_MODES,
    LoadSettings,
    parse_threads,
)

__all__ = [
    "MODEL_HELP",
    "add_head_options",
    "add_jpeg_draft_option",
    "add_precision_option",
    "add_threads_option",
]

_FIELDS = {item.name: item for item in dataclasses.fields(LoadSettings)}


def _help(name: str) -> str:
    return str(_FIELDS[name].metadata["help"]).replace("%", "%%")


def add_precision_option(parser: Any) -> None:
    parser.add_argument(
        "--precision",
        default=_FIELDS["precision"].default,
        choices=PRECISIONS,
        help=_help("precision") + f" (default {_FIELDS['precision'].default})",
    )


def threads_value(text: str) -> int | str:
    try:
        return parse_threads(text)
    except VitkitError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_threads_option(parser: Any) -> None:
    parser.add_argument(
        "--threads", type=threads_value, default="auto", help=_help("threads") + " (default auto)"
    )


def add_head_options(parser: Any) -> None:
    """``--threshold`` (as text), ``--problem-type`` and ``--tta``."""
    parser.add_argument("--threshold", default=None, help=_help("threshold"))
    parser.add_argument(
        "--problem-type", default=None, choices=PROBLEM_TYPES, help=_help("problem_type")
    )
    parser.add_argument(
        "--tta", default=_FIELDS["tta"].default, choices=TTA_MODES, help=_help("tta")
    )


def add_jpeg_draft_option(parser: Any) -> None:
    parser.add_argument("--jpeg-draft", action="store_true", help=_help("jpeg_draft"))
