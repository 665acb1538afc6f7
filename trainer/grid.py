"""FeatureNet's output grid, which every member beside the networks must answer on.

Its own module (no torch, no model) so that the members beside the networks (line bank, whitened, extremes,
context) can use it without importing the model that imports them.
"""

from __future__ import annotations


def feature_map_size(size: int) -> int:
    """Output side length for an input side length (valid convolutions, one 2×2 pool)."""
    return (size - 6) // 2 - 12
