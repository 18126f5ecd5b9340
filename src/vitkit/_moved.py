"""The flat module paths of vitkit 0.1, kept importable with a DeprecationWarning.

vitkit 0.1 had every module at the top (``vitkit.classifier``, ``vitkit.train``, ...); they now
live in layer packages. A user script that imports an old path gets the new module (or, for a
module that was split, a module whose names come from its parts) and a warning naming the new
path. Nothing inside vitkit imports these names; tests check both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

MOVED: dict[str, str] = {
    "vitkit.config": "vitkit.models.config",
    "vitkit.model": "vitkit.models.vit",
    "vitkit.posembed": "vitkit.models.posembed",
    "vitkit.io": "vitkit.images.decode",
    "vitkit.fast_jpeg": "vitkit.images.fast_jpeg",
    "vitkit.fetch": "vitkit.images.fetch",
    "vitkit.processor": "vitkit.images.processor",
    "vitkit.classifier": "vitkit.inference.classifier",
    "vitkit.runtime": "vitkit.inference.runtime",
    "vitkit.core_split": "vitkit.inference.core_split",
    "vitkit.explain": "vitkit.inference.explain",
    "vitkit.onnx_backend": "vitkit.checkpoints.onnx",
    "vitkit.inference.onnx": "vitkit.checkpoints.onnx",
    "vitkit.train": "vitkit.training.trainer",
    "vitkit.data": "vitkit.training.data",
    "vitkit.augment": "vitkit.training.augment",
    "vitkit.distributed": "vitkit.training.distributed",
    "vitkit.metrics": "vitkit.training.metrics",
    "vitkit.plots": "vitkit.training.plots",
    "vitkit.compare": "vitkit.experiments.compare",
    "vitkit.demo_data": "vitkit.experiments.demo_data",
    "vitkit.peers": "vitkit.bench.peers",
    "vitkit.agreement": "vitkit.bench.agreement",
}
# Modules that were split: the old path offers the names of all its parts.
SPLIT: dict[str, tuple[str, ...]] = {
    "vitkit.distill": (
        "vitkit.models.deit",
        "vitkit.checkpoints.hf_deit",
        "vitkit.training.distillation",
    ),
    "vitkit.baselines": ("vitkit.models.resnet", "vitkit.checkpoints.hf_resnet"),
}


class _SplitModule(types.ModuleType):
    """An old module whose names now live in several modules."""

    def __init__(self, name: str, parts: Sequence[str]) -> None:
        super().__init__(name)
        self._parts = tuple(parts)

    def __getattr__(self, attribute: str) -> Any:
        for part in self._parts:
            module = importlib.import_module(part)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"{self.__name__} (now {', '.join(self._parts)}) has no {attribute!r}")


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, old: str) -> None:
        self.old = old

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED.get(self.old) or ", ".join(SPLIT[self.old])
        warnings.warn(
            f"{self.old} moved to {new}; import it from there (the old path goes in vitkit 0.3)",
            DeprecationWarning,
            stacklevel=3,
        )
        if self.old in MOVED:
            return importlib.import_module(MOVED[self.old])
        return _SplitModule(self.old, SPLIT[self.old])

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module came ready from ``create_module``."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED or fullname in SPLIT:
            return importlib.machinery.ModuleSpec(fullname, _MovedLoader(fullname))
        return None


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (real modules are found first)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
