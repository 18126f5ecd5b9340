"""Preprocessing: preprocessor_config.json -> model-ready tensors, in "fast" and "pil" modes.

See ``vitkit.images.processor.image_processor`` for the two modes and what each matches exactly.
"""

from vitkit.images.processor.image_processor import (
    DEFAULT_MODE,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    MODES,
    ImageProcessor,
    PreparedBatch,
    ProcessorConfigError,
)
from vitkit.images.processor.sizes import SizeSpec

__all__ = [
    "DEFAULT_MODE",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "MODES",
    "ImageProcessor",
    "PreparedBatch",
    "ProcessorConfigError",
    "SizeSpec",
]
