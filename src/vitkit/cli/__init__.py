"""`vitkit` command line: one module per sub-command, discovered at start-up.

Each ``vitkit/cli/<name>.py`` defines ``register(subparsers)`` that adds its parser and sets
``func`` (a callable taking the parsed args and returning an exit code). Modules import heavy
libraries (torch, transformers, fastapi) inside their ``run`` function so ``vitkit --help``
stays fast. The CLI is a thin layer: all behaviour lives in the library.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from vitkit.errors import UsageError, VitkitError

# The order `vitkit --help` lists commands in: the user's journey, not the alphabet.
_WORKFLOW = [
    "predict",
    "embed",
    "info",
    "convert",
    "pretrain",
    "train",
    "eval",
    "demo",
    "compare",
    "distill",
    "explain",
    "slide",
    "serve",
    "bench",
    "export",
    "push",
]


def _help_order(module_info: pkgutil.ModuleInfo) -> tuple[int, str]:
    name = module_info.name
    return (_WORKFLOW.index(name) if name in _WORKFLOW else len(_WORKFLOW), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description=(
            "Vision Transformers: classify, embed, fine-tune, evaluate, serve and benchmark. "
            "Run 'vitkit COMMAND --help' for the options of one command."
        ),
    )
    from vitkit import __version__

    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    package_path = __path__
    for module_info in sorted(pkgutil.iter_modules(package_path), key=_help_order):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


# The optional dependencies a command may reach, and the extra (pyproject.toml) that installs each:
# a base install answers a command that needs one with a line, not a traceback.
EXTRA_OF_PACKAGE = {
    "pyarrow": "parquet",
    "ray": "ray",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "openslide": "slides",
    "tifffile": "slides",
    "transformers": "bench",
    "timm": "bench",
    "skimage": "bench",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as error:  # options that cannot go together: as argparse's own errors
        print(f"vitkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except VitkitError as error:
        print(f"vitkit {args.command}: error: {error}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] not in EXTRA_OF_PACKAGE:
            raise  # not an optional dependency: a bug, keep the traceback
        top = error.name.split(".")[0]
        extra = EXTRA_OF_PACKAGE[top]
        print(
            f"vitkit {args.command}: error: needs {top}: pip install 'vitkit[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
