"""Output sizes, exactly as transformers computes them (``image_transforms`` / backends).

A preprocessor_config.json ``size`` is either ``{"height": H, "width": W}`` (resize to exactly
that), ``{"shortest_edge": S}`` (keep the aspect ratio, short side S; what torchvision's Resize does
with an int), or ``{"shortest_edge": S, "longest_edge": L}``. Old configs write a bare int, which
ViT's processor reads as a square (``default_to_square=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SizeSpec:
    height: int | None = None
    width: int | None = None
    shortest_edge: int | None = None
    longest_edge: int | None = None

    @classmethod
    def parse(cls, value: Any, *, key: str = "size") -> SizeSpec:
        if isinstance(value, int):
            return cls(height=value, width=value)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return cls(height=int(value[0]), width=int(value[1]))
        if isinstance(value, dict):
            known = {"height", "width", "shortest_edge", "longest_edge"}
            unknown = set(value) - known
            spec = cls(**{k: int(v) for k, v in value.items() if k in known and v is not None})
            if not unknown and (spec.is_fixed or spec.shortest_edge):
                return spec
        raise ValueError(
            f"preprocessor config {key}={value!r} is not understood: use "
            '{"height": H, "width": W} or {"shortest_edge": S} (optionally with "longest_edge")'
        )

    @property
    def is_fixed(self) -> bool:
        return self.height is not None and self.width is not None

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if v is not None}

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        if self.shortest_edge and self.longest_edge:
            return size_with_aspect_ratio(height, width, self.shortest_edge, self.longest_edge)
        if self.shortest_edge:
            return shortest_edge_size(height, width, self.shortest_edge)
        assert self.height is not None and self.width is not None
        return (self.height, self.width)


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """transformers' get_resize_output_image_size(default_to_square=False, max_size=None)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def size_with_aspect_ratio(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """transformers' get_size_with_aspect_ratio (short side ``size``, long side at most ``max_size``)."""
    raw_size = None
    min_side, max_side = float(min(height, width)), float(max(height, width))
    if max_side / min_side * size > max_size:
        raw_size = max_size * min_side / max_side
        size = round(raw_size)
    if (height <= width and height == size) or (width <= height and width == size):
        return (height, width)
    if width < height:
        return (int((raw_size or size) * height / width), size)
    return (size, int((raw_size or size) * width / height))
