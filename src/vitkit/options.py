"""Settings fields that also describe their command-line option (one source for every option).

A settings dataclass anywhere in vitkit declares each field with ``option(...)``: its type (the
annotation), default, help, group, flags and choices. ``vitkit.cli._options`` turns such a
dataclass into argparse options (as transformers' ``HfArgumentParser`` does) and builds it back
from the parsed arguments; the library takes the dataclass whole. A default is therefore written
once, in the field, and help text reads it from there.

Torch-free and dependency-free: ``vitkit --help`` imports it at start-up. It sits outside the
layers (like ``vitkit.errors``): any package may import it.
"""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    group: str,
    flags: tuple[str, ...] = (),
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    default_factory: Any = MISSING,
    default_help: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field that also describes its command-line option.

    ``flags``: the option strings (default ``--field-name``; a ``True`` bool gets ``--no-...``);
    ``default_help``: what to say instead of the default value (for ``None`` defaults that mean
    "chosen for you"); ``cli=False``: a library-only field.
    """
    metadata = {
        "help": help,
        "group": group,
        "flags": flags,
        "choices": choices,
        "metavar": metavar,
        "default_help": default_help,
        "cli": cli,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)
