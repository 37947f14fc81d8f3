"""Train/val/test split of a video, from a stable hash of its ``video_id`` (SPEC §5).

The split depends on the ``video_id`` alone, never on the other videos, the version or the order
of arrival, so a video never changes split between versions or datasets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

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


def ids_filling_splits(counts: dict[str, int], make_id: Callable[[int], str],
                       max_tries: int = 1_000_000) -> list[tuple[int, str]]:
    """The first ``(i, make_id(i))``, i = 0, 1, ..., whose split still needs videos, until each
    split ``s`` has ``counts[s]`` of them (for synthetic corpora that must cover every split)."""
    if any(s not in SPLITS or n < 0 for s, n in counts.items()):
        raise ValueError(f"counts must map splits {SPLITS} to non-negative numbers: {counts}")
    want, out = dict(counts), []
    for i in range(max_tries):
        if not any(want.values()):
            return out
        video_id = make_id(i)
        split = split_of(video_id)
        if want.get(split, 0) > 0:
            want[split] -= 1
            out.append((i, video_id))
    raise ValueError(f"no {counts} split fill within {max_tries} ids")
