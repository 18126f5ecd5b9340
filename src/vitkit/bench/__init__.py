"""Speed and agreement benchmarks: the timing engine, peer models (transformers, timm), int8 agreement."""
