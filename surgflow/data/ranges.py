"""Half-open frame ranges ``(start, end)``: the one place their arithmetic lives. Pure.

Out-of-body ranges, blackouts, synthetic scene stretches and the frames a reel or a task shows
are all sorted, non-overlapping ranges of one video's frames; :func:`merge` makes any list of
ranges into that form, :func:`check` refuses what is not, and :func:`contains` / :func:`covers`
ask about a frame or a range of frames.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

import numpy as np

Ranges = tuple[tuple[int, int], ...]


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sorted ranges with empty ones dropped and overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for s, e in sorted((int(s), int(e)) for s, e in ranges if e > s):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return tuple(out)


def check(ranges: Iterable[Iterable[int]], what: str = "range") -> Ranges:
    """``ranges`` as a tuple of ``(start, end)`` int pairs; ValueError naming the first one
    that is empty, negative, out of order or overlapping its predecessor."""
    out: list[tuple[int, int]] = []
    for r in ranges:
        start, end = (int(x) for x in r)
        if not 0 <= start < end:
            raise ValueError(f"{what} {(start, end)}: expected 0 <= start < end")
        if out and start < out[-1][1]:
            raise ValueError(f"{what} {(start, end)} starts before the previous range "
                             f"{out[-1]} ends; expected sorted, non-overlapping ranges")
        out.append((start, end))
    return tuple(out)


def contains(ranges: Ranges, frame: int) -> bool:
    """Whether ``frame`` lies in one of ``ranges`` (sorted, non-overlapping)."""
    j = bisect.bisect_right(ranges, (frame, math.inf))
    return j > 0 and frame < ranges[j - 1][1]


def covers(ranges: Ranges, start: int, end: int) -> bool:
    """Whether one of ``ranges`` (sorted, non-overlapping) holds all of ``[start, end)``."""
    j = bisect.bisect_right(ranges, (start, math.inf))
    return j > 0 and end <= ranges[j - 1][1]


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The ranges where the boolean ``mask`` is true."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], np.asarray(mask, np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
