"""vitkit: Vision Transformers with exact checkpoints, fine-tuning, serving and benchmarks.

import vitkit
classifier = vitkit.load("google/vit-base-patch16-224")   # or a directory, .safetensors, .npz
classifier.predict(["cat.jpg"], top_k=5)   # [[{"label": ..., "score": ...}, ...]]
classifier.embed(["cat.jpg"], pool="cls")  # (1, 768) numpy array
"""

from vitkit.classifier import Classifier, load
from vitkit.config import ViTConfig, preset
from vitkit.model import ViT, ViTOutput

__version__ = "0.1.0"

__all__ = ["Classifier", "ViT", "ViTConfig", "ViTOutput", "__version__", "load", "preset"]
