"""vitkit: Vision Transformers with exact checkpoints, fine-tuning, serving and benchmarks."""

from vitkit.config import ViTConfig, preset
from vitkit.model import ViT, ViTOutput

__version__ = "0.1.0"

__all__ = ["ViT", "ViTConfig", "ViTOutput", "__version__", "preset"]
