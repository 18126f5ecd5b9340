"""Every option of every command does what it says, under every engine it is offered with.

Built from the parsers themselves: a new option (or command) is covered without editing this
file. For each option of each sub-command, under each ``--engine`` the command offers, the
option set to another value than its default must change the settings the command hands the
library (``vitkit.cli._options.settings_of``), or the command must refuse it (exit 2) with a
line naming it. Every option must come from a settings dataclass, and every default the
command line shows must be the dataclass's own (or one the command declares: ``defaults=``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vitkit.cli import build_parser, main
from vitkit.cli._options import GENERATED, Generated, generated, settings_of
from vitkit.errors import UsageError
from vitkit.options import field_default

# Arguments a command needs to parse at all, under each engine (a command not listed here gets
# "x" for each required argument).
BASE: dict[str, dict[str, list[str]]] = {
    "predict": {"local": ["x.jpg"], "ray": ["x.jpg", "--out", "shards"]},
    "embed": {"local": ["x.jpg", "--out", "e.npy"], "ray": ["x.jpg", "--out", "shards"]},
    "slide": {"local": ["a.svs", "--out", "o"], "ray": ["a.svs", "--out", "o"]},
    "eval": {"local": ["--data", "d"]},
    "info": {"local": ["m"]},
    "convert": {"local": ["src", "dst"]},
    "export": {"local": ["m", "m.onnx"]},
    "explain": {"local": ["x.jpg", "--out", "o"]},
    "compare": {"local": ["--data", "d", "--out", "o"]},
    "train": {"local": ["--data", "d", "--out", "o"]},
    "distill": {"local": ["--data", "d", "--out", "o", "--teacher", "t", "--student", "s"]},
    "pretrain": {"local": ["--data", "d", "--out", "o"]},
}


@functools.cache
def root() -> argparse.ArgumentParser:
    return build_parser()


def subparsers() -> dict[str, argparse.ArgumentParser]:
    """Every command, by the words that name it ("predict", "mil train")."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if words and not nested:
            found[" ".join(words)] = parser
        for action in nested:
            for name, sub in action.choices.items():
                walk(sub, (*words, name))

    walk(root(), ())
    return found


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def engines(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    engine = next((a for a in parser._actions if a.dest == "engine"), None)
    return tuple(engine.choices or ()) if engine is not None else ("local",)


def base_args(command: str, parser: argparse.ArgumentParser, engine: str) -> list[str]:
    if command in BASE:
        given = BASE[command].get(engine, BASE[command]["local"])
    else:  # a command this file does not know: every required argument gets "x"
        given = []
        for action in options(parser):
            if not action.option_strings:
                given.append("x")
            elif action.required:
                given += [action.option_strings[0], "x"]
    return [*command.split(), *given] + (["--engine", engine] if engine != "local" else [])


def other_values(action: argparse.Action, default: Any) -> Iterator[list[str]]:
    """Command-line words that set ``action`` away from ``default``, most natural first."""
    if action.nargs == 0:  # a flag
        yield [action.option_strings[0]]
        return
    if action.nargs == "?":  # --agreement [FOLDER]: the bare flag gives its constant
        yield [action.option_strings[0]]
    flag = action.option_strings[0]
    if action.choices:
        yield from ([flag, str(c)] for c in action.choices if c != default)
        return
    if isinstance(default, str) and "," in default:  # a comma list: its first element alone
        yield [flag, default.split(",")[0]]
    if isinstance(default, bool):
        return
    if isinstance(default, int | float) and not isinstance(default, bool):
        yield [flag, str(type(default)(default + 1 if isinstance(default, int) else 0.25))]
    if action.metavar == "KEY=VALUE":
        yield [flag, "k=1"]
    for text in ("3", "0.4", "example.org", "x-value"):
        yield [flag, text]


def parses(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        return None


def outcome(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, Any]:
    """("settings", what the command hands the library) or ("refused", the message)."""
    args = parser.parse_args(argv)
    try:
        return "settings", settings_of(args)
    except UsageError as error:
        return "refused", str(error)


def cases() -> Iterator[tuple[str, str, str]]:
    for command, parser in sorted(subparsers().items()):
        for engine in engines(parser):
            for action in options(parser):
                if action.option_strings and action.dest != "engine":
                    yield command, engine, action.option_strings[0]


@pytest.mark.parametrize(("command", "engine", "flag"), list(cases()))
def test_every_option_changes_the_settings_or_is_refused(
    command: str, engine: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = subparsers()[command]
    action = next(a for a in parser._actions if flag in a.option_strings)
    base = base_args(command, parser, engine)
    kind, before = outcome(root(), base)
    assert kind == "settings", f"vitkit {' '.join(base)} is refused: {before}"
    unchanged = getattr(root().parse_args(base), action.dest)
    tried = []
    for words in other_values(action, action.default):
        argv = [*base, *words]
        args = parses(root(), argv)
        if args is None or getattr(args, action.dest) == unchanged:
            tried.append(" ".join(words))
            continue
        kind, after = outcome(root(), argv)
        if kind == "refused":
            assert any(name in after for name in action.option_strings), after
            assert "\n" not in after
        else:
            assert after != before, f"vitkit {' '.join(argv)}: {flag} changed nothing"
        return
    if action.choices is not None and len(action.choices) == 1:
        return  # one choice (export --format onnx): nothing else to set it to
    pytest.fail(f"no value of {flag} parses for vitkit {command} (tried {tried})")


def test_every_option_comes_from_a_settings_dataclass() -> None:
    """Every option (a flag; positional arguments name the command's inputs) is a field."""
    for command, parser in subparsers().items():
        records: tuple[Generated, ...] = tuple(parser._defaults.get(GENERATED, ()))
        assert records, f"vitkit {command}: options not generated from settings dataclasses"
        from_fields = [name for record in records for name in record.fields]
        assert len(from_fields) == len(set(from_fields)), f"vitkit {command}: a field twice"
        hand_typed = [
            a.option_strings
            for a in options(parser)
            if a.option_strings and a.dest not in from_fields
        ]
        assert not hand_typed, f"vitkit {command}: {hand_typed} typed by hand"


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_every_cli_default_is_the_dataclass_default(command: str) -> None:
    """Parsed with no option, each settings object holds its dataclass's defaults, except the
    ones the command declares (``add_options(defaults=...)``, e.g. "auto" threads)."""
    parser = subparsers()[command]
    for engine in engines(parser):
        argv = base_args(command, parser, engine)
        args = root().parse_args(argv)
        given = {
            a.dest
            for a in options(parser)
            if not a.option_strings or any(flag in argv for flag in a.option_strings)
        }
        for record in generated(args):
            for item in dataclasses.fields(record.config_class):
                if item.name not in record.fields or item.name in given:
                    continue
                expected = record.defaults.get(item.name, field_default(item))
                value = getattr(args, item.name)
                parsed = _as_field(record, item.name, args)
                assert parsed == expected, (
                    f"vitkit {command} {item.name}: CLI {value!r} -> {parsed!r}, "
                    f"dataclass {expected!r}"
                )


def _as_field(record: Generated, name: str, args: argparse.Namespace) -> Any:
    """The field as the settings object holds it (a required field the command fills itself,
    without an option, gets a stand-in)."""
    from vitkit.cli._options import config_from_args

    config_class = record.config_class
    filled = {
        item.name: "x"
        for item in dataclasses.fields(config_class)
        if item.name not in record.fields and field_default(item) is dataclasses.MISSING
    }
    return getattr(config_from_args(config_class, args, **filled), name)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["predict", "x.jpg", "--ray-address", "auto"], "--ray-address needs --engine ray"),
        (["predict", "x.jpg", "--image-column", "img"], "--image-column needs --engine ray"),
        (["predict", "x.jpg", "--cpus-per-worker", "2"], "--cpus-per-worker needs --engine ray"),
        (["embed", "x.jpg", "-o", "e.npy", "--gpus-per-worker", "1"], "--gpus-per-worker"),
        (["predict", "x.jpg", "--engine", "ray", "-o", "d", "-f", "json"], "--format needs"),
        (["slide", "a.svs", "-o", "o", "--id-column", "i"], "unrecognized arguments"),
        (["info", "m", "--precision", "int8"], "--precision needs --timings"),
    ],
)
def test_refusals_exit_2_before_any_work_with_one_line(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) if "unrecognized" in named else _no_raise():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err
    if "unrecognized" not in named:  # argparse's own errors add a usage line
        assert err.count("\n") == 1, err


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
