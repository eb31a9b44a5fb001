"""The pixel budget: how large a screen may be once resized, and so how many image tokens it costs.

Kept free of heavy imports so that the command line and configs can name budgets cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PixelBudget:
    """How many pixels a screen may have after Qwen's resize (each side snaps to a multiple of 28).

    A screen of ``h*w`` pixels inside the budget keeps its size and costs ``(h/28) * (w/28)`` image tokens;
    larger screens are shrunk to fit ``max_pixels``, smaller ones grown to ``min_pixels``. One budget is
    applied to the processor and read back by the prompt-length check, so the two always agree.
    """

    min_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        if int(self.min_pixels) <= 0 or int(self.max_pixels) < int(self.min_pixels):
            raise ValueError(
                f"PixelBudget needs 0 < min_pixels <= max_pixels, got min_pixels={self.min_pixels}, "
                f"max_pixels={self.max_pixels}"
            )

    @classmethod
    def of(cls, processor) -> PixelBudget:
        """The budget a loaded processor applies now."""
        size = processor.image_processor.size
        get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
        return cls(int(get("shortest_edge")), int(get("longest_edge")))


# The tiny model's default: the small square screens (112, 168, 224: 16, 36, 64 image tokens) keep their
# size exactly, and the paper's 840x640 screen shrinks to 252x168 (54 image tokens).
TINY_BUDGET = PixelBudget(min_pixels=56 * 56, max_pixels=224 * 224)
