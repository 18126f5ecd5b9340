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

from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields
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
    parse: Callable[[str], Any] | None = None,
    repeat: bool = False,
    const: Any = MISSING,
    engines: tuple[str, ...] | None = None,
    engine_note: str = "",
) -> Any:
    """A dataclass field that also describes its command-line option.

    ``flags``: the option strings (default ``--field-name``; a ``True`` bool gets ``--no-...``;
    a name without dashes makes a positional argument); ``default_help``: what to say instead of
    the default value (for ``None`` defaults that mean "chosen for you"); ``cli=False``: a
    library-only field. ``parse``: turns the option's text into the field's value (its errors
    become argparse's exit 2); ``repeat``: a list option given once per value (``--allow-host A
    --allow-host B``) rather than comma-separated; ``const``: the value of the bare flag for an
    option whose value is optional (``--agreement`` / ``--agreement FOLDER``). ``engines``: the
    engines that honour the field (e.g. ``("ray",)`` for ``--ray-address``); under another, a
    value other than the default is refused before any work, with ``engine_note`` saying why.
    """
    metadata = {
        "help": help,
        "group": group,
        "flags": flags,
        "choices": choices,
        "metavar": metavar,
        "default_help": default_help,
        "cli": cli,
        "parse": parse,
        "repeat": repeat,
        "const": const,
        "engines": engines,
        "engine_note": engine_note,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_default(item: Field[Any]) -> Any:
    """A field's default value (a fresh one for a factory); ``MISSING`` for a required field."""
    if item.default_factory is not MISSING:
        return item.default_factory()
    return item.default


def reuse(
    config_class: type,
    name: str,
    default: Any = MISSING,
    *,
    help: str | None = None,
    **changes: Any,
) -> Any:
    """The field ``name`` of another settings dataclass, for a dataclass that takes the same
    setting (its type, group, flags and choices come along; ``default`` and ``help`` may be the
    reusing command's own, e.g. ``vitkit compare``'s epochs per row)."""
    source = next(item for item in fields(config_class) if item.name == name)
    metadata = {**source.metadata, **changes}
    if help is not None:
        metadata["help"] = help
    if default is not MISSING:
        metadata["default_help"] = changes.get(
            "default_help"
        )  # the source's words describe its own
        return field(default=default, metadata=metadata)
    if source.default_factory is not MISSING:
        return field(default_factory=source.default_factory, metadata=metadata)
    return field(default=source.default, metadata=metadata)
