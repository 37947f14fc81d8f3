"""Train/val/test split of a video, from a stable hash of its ``video_id`` (SPEC §5).

The split depends on the ``video_id`` alone, never on the other videos, the version or the order
of arrival, so a video never changes split between versions or datasets.
"""

from __future__ import annotations

import hashlib

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def split_position(video_id: str) -> float:
    """A uniform number in [0, 1) derived from ``video_id`` (sha256, first 8 bytes)."""
    digest = hashlib.sha256(f"surgflow-split:{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(video_id: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """The split ("train", "val" or "test") that ``video_id`` belongs to."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, "
                         f"got {fractions}")
    x = split_position(video_id)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if x < edge:
            return name
    return SPLITS[-1]
