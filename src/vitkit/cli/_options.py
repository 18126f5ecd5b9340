"""Command-line options generated from a settings dataclass (transformers' HfArgumentParser idea).

Each field of a dataclass built with ``vitkit.training.config.option`` becomes one argparse
option: ``--field-name`` (or the field's ``flags``), its type from the annotation, its default,
choices and help from the field. ``config_from_args`` builds the dataclass back from the parsed
arguments. Defaults are therefore written once, in the dataclass; a command may still show a
different default for a field (``defaults=``), e.g. ``vitkit demo`` trains on the CPU.

Types understood: str, int, float, bool (``False`` -> ``--flag``; ``True`` -> ``--no-flag``),
``X | None``, ``dict[str, Any]`` (``--opt KEY=VALUE``, repeatable; values parsed as JSON where
they can be) and ``list[str]`` (comma-separated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from typing import Any

from vitkit.errors import UsageError, VitkitError
from vitkit.options import field_default


def add_options(
    parser: argparse.ArgumentParser,
    config_class: type,
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """Add one option per field of ``config_class`` (grouped as the fields say).

    ``helps``: this command's own help text for some fields, where the field's would mislead
    (``vitkit pretrain``'s --data has no classes); the default value is still shown.
    """
    wanted = set(only) if only is not None else None
    skipped = set(exclude)
    defaults = defaults or {}
    helps = helps or {}
    groups: dict[str, Any] = {}
    hints = typing.get_type_hints(config_class)
    added = [
        item
        for item in dataclasses.fields(config_class)
        if item.metadata.get("cli", False)
        and item.name not in skipped
        and (wanted is None or item.name in wanted)
    ]
    record(parser, Generated(config_class, tuple(item.name for item in added), dict(defaults)))
    for item in added:
        meta = item.metadata
        group_name = meta["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        default = defaults.get(item.name, field_default(item))
        overridden = item.name in defaults
        _add_field(
            groups[group_name], item, hints[item.name], default, helps.get(item.name), overridden
        )


def config_from_args(config_class: type, args: argparse.Namespace, **extra: Any) -> Any:
    """``config_class`` from the parsed options (fields without an option take ``extra``)."""
    hints = typing.get_type_hints(config_class)
    records = [entry.fields for entry in generated(args) if entry.config_class is config_class]
    # Only this class's own options (another class may have a field of the same name); a
    # namespace made by hand (no records) is read by field name.
    mine = set().union(*records) if records else set(vars(args))
    values: dict[str, Any] = {}
    for item in dataclasses.fields(config_class):
        if item.name in extra:
            values[item.name] = extra[item.name]
        elif item.name in mine:
            value = getattr(args, item.name)
            # None from an option that was not given, for a field that cannot be None (a
            # repeatable KEY=VALUE option): the dataclass default applies.
            if value is not None or _takes_none(hints[item.name]):
                values[item.name] = _convert(_flags(item)[0], hints[item.name], value)
    return config_class(**values)


@dataclasses.dataclass(frozen=True)
class Generated:
    """The options ``add_options`` made for one settings class: which fields, and the defaults
    the command shows instead of the fields' own (``defaults=``)."""

    config_class: type
    fields: tuple[str, ...]
    defaults: dict[str, Any]


GENERATED = "vitkit_settings"  # where a parser keeps its Generated records (a parser default)


def record(parser: Any, entry: Generated) -> None:
    # An argument group shares its parser's defaults: recorded through either, read from args.
    parser.set_defaults(**{GENERATED: (*parser._defaults.get(GENERATED, ()), entry)})


def generated(args: argparse.Namespace) -> tuple[Generated, ...]:
    """The settings classes (and fields) the parsed command's options came from."""
    return tuple(getattr(args, GENERATED, ()))


def settings_of(args: argparse.Namespace) -> Any:
    """What the parsed command hands the library: its own ``settings(args)``, else one object
    per settings class its options came from."""
    own = getattr(args, "settings", None)
    if own is not None:
        return own(args)
    classes = dict.fromkeys(entry.config_class for entry in generated(args))
    return tuple(_settings_object(config_class, args) for config_class in classes)


def _settings_object(config_class: type, args: argparse.Namespace) -> Any:
    """``config_class`` from the options; where the command takes only some fields of a class
    whose other fields are required (``vitkit mil eval``'s --data of TrainConfig), those
    fields' values, by name."""
    filled = {
        name
        for entry in generated(args)
        if entry.config_class is config_class
        for name in entry.fields
    }
    by_hand = _given_by_hand(config_class, args)
    required = {
        item.name
        for item in dataclasses.fields(config_class)
        if field_default(item) is dataclasses.MISSING
    }
    if required <= filled | set(by_hand):
        return config_from_args(config_class, args, **by_hand)
    return {name: getattr(args, name) for name in sorted(filled)}


def _given_by_hand(config_class: type, args: argparse.Namespace) -> dict[str, Any]:
    """Required fields without an option of their own that the command's own arguments fill
    (``vitkit push DIR REPO_ID``)."""
    generated_fields = {name for entry in generated(args) for name in entry.fields}
    return {
        item.name: getattr(args, item.name)
        for item in dataclasses.fields(config_class)
        if item.name not in generated_fields
        and field_default(item) is dataclasses.MISSING
        and hasattr(args, item.name)
    }


def parse_key_values(pairs: list[str], flag: str = "--model-arg") -> dict[str, Any]:
    """``["num_hidden_layers=4", "hidden_size=64"]`` -> dict, values parsed as JSON when they can be."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise VitkitError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. num_hidden_layers=4")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


# ---- one field ------------------------------------------------------------------------------
def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; anything else unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _takes_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _flags(item: dataclasses.Field[Any]) -> tuple[str, ...]:
    return tuple(item.metadata["flags"]) or ("--" + item.name.replace("_", "-"),)


def _add_field(
    group: Any,
    item: dataclasses.Field[Any],
    annotation: Any,
    default: Any,
    own_help: str | None = None,
    overridden: bool = False,
) -> None:
    meta = item.metadata
    kind = _base_type(annotation)
    origin = typing.get_origin(kind)
    help_text = own_help or meta["help"]
    # A command's own help or default is shown as it is; the field's words describe the field's.
    own = own_help is not None or overridden
    shown = meta["default_help"] if meta["default_help"] is not None and not own else default
    flags = _flags(item)
    if not flags[0].startswith("-"):  # positional: argparse names it by its flag
        _add_positional(group, item, origin is list, help_text, meta["metavar"])
        return
    kwargs: dict[str, Any] = {"dest": item.name}
    if kind is bool:
        kwargs["action"] = "store_false" if default else "store_true"
        help_text = f"no {help_text}" if default else help_text
    elif origin is dict:
        kwargs.update(action="append", default=None, metavar=meta["metavar"] or "KEY=VALUE")
        shown = " ".join(f"{k}={json.dumps(v)}" for k, v in default.items()) or None
    elif origin is list and meta["repeat"]:
        kwargs.update(action="append", default=None, metavar=meta["metavar"])
        shown = ",".join(map(str, default)) or None
    elif origin is list:
        joined = ",".join(map(str, default)) if default is not dataclasses.MISSING else None
        kwargs.update(default=joined, metavar=meta["metavar"])
        shown = joined
    else:
        kwargs.update(type=_parser_of(item, kind), metavar=meta["metavar"])
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if meta["const"] is not dataclasses.MISSING:
            kwargs.update(nargs="?", const=meta["const"])
        if default is dataclasses.MISSING:
            kwargs["required"] = True
            shown = None
        else:
            kwargs["default"] = default
    if kind is not bool and shown not in (None, ""):
        help_text = f"{help_text} (default: {shown})"
    group.add_argument(*flags, help=help_text.replace("%", "%%"), **kwargs)


def _add_positional(
    group: Any, item: dataclasses.Field[Any], many: bool, help_text: str, metavar: str | None
) -> None:
    """A field given without a flag: one value, or one or more for a list (``inputs``)."""
    kwargs: dict[str, Any] = {"metavar": metavar}
    if many:
        kwargs["nargs"] = "+"
    else:
        kwargs["type"] = _parser_of(item, str)
    group.add_argument(_flags(item)[0], help=help_text.replace("%", "%%"), **kwargs)


def _parser_of(item: dataclasses.Field[Any], kind: Any) -> Any:
    """The argparse ``type`` of a field: its own ``parse`` (its errors: exit 2, its message) or
    the annotation's type."""
    parse = item.metadata.get("parse")
    if parse is None:
        return kind

    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except (VitkitError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parsed.__name__ = item.name  # argparse names the type in its messages
    return parsed


def _convert(flag: str, annotation: Any, value: Any) -> Any:
    """The parsed value as the field's type (dict and list options arrive as text)."""
    kind = _base_type(annotation)
    origin = typing.get_origin(kind)
    if origin is dict:
        return parse_key_values(value, flag)
    if origin is list and isinstance(value, str):
        member = (typing.get_args(kind) or (str,))[0]
        parts = [part.strip() for part in value.split(",") if part.strip()]
        try:
            return [member(part) for part in parts]
        except ValueError:
            raise UsageError(
                f"{flag} {value!r}: expected comma-separated {member.__name__}s"
            ) from None
    return value
