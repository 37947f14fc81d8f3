"""SPEC §4 precedence on interval objects: the oracle the library's engine is checked against.

The library resolves on Arrow columns (:mod:`surgflow.data.changes`). This is a second, plain
implementation of the same rule, written for clarity and not for speed, so that the property
tests in ``tests/test_labels.py`` can compare the two on random events: a human label beats a
model label; among the same provenance the later ``produced_at`` (an instant) wins; a tie goes
to the later ``(partition, offset)``, then to ``event_id``, label and confidence only to keep the
order total. Each frame goes to the largest key; adjacent pieces won by one key are merged.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import defaultdict
from collections.abc import Iterable

from surgflow.data.labels import Interval, LabelEvent, Segment, coalesce_rows

_RANK = {"model": 0, "human": 1}


def key(iv: Interval) -> tuple:
    """The precedence key of the event that made ``iv``: larger wins. Equal keys mean the same
    event and segment label."""
    return (_RANK[iv.provenance], iv.produced_at, iv.partition, iv.offset, iv.event_id,
            iv.label, -1.0 if iv.confidence is None else iv.confidence)


def intervals_of(event: LabelEvent) -> list[Interval]:
    """The event's segments as (unresolved) intervals; empty ranges dropped, human ones without
    a confidence."""
    human = event.provenance == "human"
    return [Interval(s.start_frame, s.end_frame, s.label, event.provenance,
                     None if human else s.confidence, event.produced_at, event.partition,
                     event.offset, event.event_id)
            for s in event.segments if s.end_frame > s.start_frame]


def resolve_video(candidates: Iterable[Interval]) -> list[Interval]:
    """Per-frame maximum of the key over possibly overlapping intervals of one video: sorted,
    non-overlapping intervals, adjacent pieces won by the same key merged."""
    cands = sorted({(key(c), c.start_frame, c.end_frame): c for c in candidates}.values(),
                   key=key)
    if not cands:
        return []
    # sweep the bounds with a heap of the covering candidates' ranks (position in key order)
    starts = sorted((c.start_frame, rank) for rank, c in enumerate(cands))
    bounds = sorted({b for c in cands for b in (c.start_frame, c.end_frame)})
    heap: list[int] = []
    out: list[Interval] = []
    i = 0
    for lo, hi in itertools.pairwise(bounds):
        while i < len(starts) and starts[i][0] <= lo:
            heapq.heappush(heap, -starts[i][1])
            i += 1
        while heap and cands[-heap[0]].end_frame <= lo:
            heapq.heappop(heap)
        if not heap:
            continue
        win = cands[-heap[0]]
        prev = out[-1] if out else None
        if prev is not None and prev.end_frame == lo and key(prev) == key(win):
            out[-1] = dataclasses.replace(prev, end_frame=hi)
        else:
            out.append(dataclasses.replace(win, start_frame=lo, end_frame=hi))
    return out


def resolve(intervals_by_video: dict[str, list[Interval]],
            events: Iterable[LabelEvent]) -> dict[str, list[Interval]]:
    """Apply ``events`` on top of already resolved intervals; every video's intervals (videos
    without new events unchanged)."""
    new: dict[str, list[Interval]] = defaultdict(list)
    for event in events:
        new[event.video_id].extend(intervals_of(event))
    out = dict(intervals_by_video)
    for video_id, extra in new.items():
        out[video_id] = resolve_video([*intervals_by_video.get(video_id, ()), *extra])
    return out


def coalesce(intervals: Iterable[Interval]) -> list[Segment]:
    """One video's resolved intervals (sorted, non-overlapping) as coalesced segments."""
    return coalesce_rows((iv.start_frame, iv.end_frame, iv.label, iv.provenance, iv.confidence)
                         for iv in intervals)


def frames_by(segments: Iterable[Segment | Interval], attr: str) -> dict[str, int]:
    """Total frames per value of ``attr`` ("label" or "provenance")."""
    totals: dict[str, int] = defaultdict(int)
    for s in segments:
        totals[getattr(s, attr)] += s.end_frame - s.start_frame
    return dict(totals)
