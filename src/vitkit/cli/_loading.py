"""How a command loads its model: ``LoadSettings`` from the options, in a process tuned for it.

The library's defaults are deterministic (a fixed thread count); a command runs alone on its
machine and may adapt to it, so the options default to ``ENTRY_POINT_DEFAULTS`` instead (the
only CLI defaults that differ from the settings dataclass, and why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitkit.inference.classifier import Classifier
    from vitkit.inference.settings import LoadSettings

# threads: "auto", by batch size and by the cores other processes keep busy
ENTRY_POINT_DEFAULTS: dict[str, Any] = {"threads": "auto"}


def load_classifier(settings: LoadSettings) -> Classifier:
    """The Classifier for these settings, in a process tuned for inference (an entry point's
    choice: allocator thresholds on a CPU, TF32 and cuDNN autotuning on CUDA)."""
    # torch loads here, not at `vitkit --help` time
    from vitkit.inference import runtime
    from vitkit.inference.classifier import load_settings

    runtime.tune_process_for_inference(settings.device)
    with runtime.loading_threads():
        return load_settings(settings)
