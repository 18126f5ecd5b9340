"""vitkit 0.1's flat module paths still import (user scripts), with a DeprecationWarning that
names the new home; nothing inside vitkit uses them."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from vitkit import _moved


@pytest.mark.parametrize(("old", "new"), sorted(_moved.MOVED.items()))
def test_moved_module_is_the_new_one(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_split_modules_offer_the_names_of_their_parts() -> None:
    sys.modules.pop("vitkit.distill", None)
    with pytest.warns(DeprecationWarning, match="vitkit.training.distillation"):
        from vitkit.distill import DistilledViT, distill, load_student  # type: ignore[attr-defined]
    from vitkit.checkpoints.hf_deit import load_student as new_load_student
    from vitkit.models.deit import DistilledViT as NewDistilledViT
    from vitkit.training.distillation import distill as new_distill

    assert (DistilledViT, distill, load_student) == (NewDistilledViT, new_distill, new_load_student)
    with pytest.raises(ImportError):
        from vitkit.distill import no_such_name  # type: ignore[attr-defined]  # noqa: F401


def test_no_vitkit_module_imports_an_old_path() -> None:
    package = Path(importlib.import_module("vitkit").__file__ or "").parent
    old_paths = set(_moved.MOVED) | set(_moved.SPLIT)
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "_moved.py":
            continue
        text = path.read_text(encoding="utf-8")
        for old in old_paths:
            if f"from {old} import" in text or f"import {old}\n" in text:
                offenders.append(f"{path.relative_to(package)}: {old}")
    assert not offenders


def test_importing_vitkit_does_not_import_torch() -> None:
    code = "import sys, vitkit; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
