"""Per-frame label resolution (SPEC §4), pure: no I/O.

Every labelled frame of a video is decided by the event that wins it under one total order, the
*precedence key*: a human label beats a model label; among the same provenance the later
``produced_at`` wins (compared as an instant); a tie goes to the later ``(partition, offset)``
and then, only to keep the order total, to ``event_id``, label and confidence. Resolution is the
per-frame maximum of that key, so it is idempotent (re-applying an event changes nothing),
order-independent, and applying events incrementally on top of a resolved parent equals
resolving every event at once.

Resolved intervals keep the key of the event that won them so that later events can be resolved
against them; :func:`coalesce` drops the key and merges neighbours for tables and statistics.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from surgflow.errors import BadInput

Provenance = Literal["human", "model"]
PROVENANCES: tuple[Provenance, ...] = ("human", "model")
_RANK = {"model": 0, "human": 1}


def as_utc(ts: datetime) -> datetime:
    """``ts`` as a UTC instant (so ``Z`` and ``+00:00`` compare equal); ValueError if naive."""
    if type(ts) is datetime and ts.tzinfo is UTC:  # already one: every interval's key has it
        return ts
    if not isinstance(ts, datetime) or ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("must be timezone-aware: an RFC 3339 time with a time zone "
                         f"(e.g. 2026-11-21T08:00:00Z), got {ts}")
    return ts.astimezone(UTC)


def _utc(ts: datetime, what: str) -> datetime:
    try:
        return as_utc(ts)
    except ValueError as e:
        raise BadInput(f"{what}: produced_at {e}") from None


@dataclass(frozen=True)
class LabelSegment:
    """One labelled half-open frame range ``[start_frame, end_frame)`` of an event."""

    start_frame: int
    end_frame: int
    label: str
    confidence: float | None = None


@dataclass(frozen=True)
class LabelEvent:
    """A batch of segments for one video from one message (inference or annotation)."""

    event_id: str
    video_id: str
    provenance: Provenance
    produced_at: datetime
    partition: int
    offset: int
    segments: tuple[LabelSegment, ...]
    task_id: str | None = None

    def __post_init__(self) -> None:
        if self.provenance not in _RANK:
            raise BadInput(
                f"event {self.event_id!r}: provenance must be 'human' or 'model', "
                f"got {self.provenance!r}"
            )
        object.__setattr__(self, "produced_at", _utc(self.produced_at, f"event {self.event_id!r}"))
        object.__setattr__(self, "segments", tuple(self.segments))

    @classmethod
    def of_checked(cls, event_id: str, video_id: str, provenance: Provenance,
                   produced_at: datetime, partition: int, offset: int,
                   segments: Iterable[tuple[int, int, str, float | None]],
                   task_id: str | None = None) -> LabelEvent:
        """An event from fields a wire schema has validated already: ``provenance`` one of
        :data:`PROVENANCES` and ``produced_at`` a UTC datetime (what the schemas' time fields
        give). ``segments`` are ``(start_frame, end_frame, label, confidence)``. Built without
        validating them again: the consumer makes one per message."""
        new = object.__new__
        segs = []
        for start, end, label, confidence in segments:
            seg = new(LabelSegment)
            seg.__dict__.update(start_frame=start, end_frame=end, label=label,
                                confidence=confidence)
            segs.append(seg)
        event = new(cls)
        event.__dict__.update(event_id=event_id, video_id=video_id, provenance=provenance,
                              produced_at=produced_at, partition=partition, offset=offset,
                              segments=tuple(segs), task_id=task_id)
        return event


@dataclass(frozen=True, order=False)
class Interval:
    """A resolved half-open frame range and the event that won it.

    ``confidence`` is None for human labels. ``produced_at``, ``partition``, ``offset`` and
    ``event_id`` are the winning event's precedence key (see :attr:`key`).
    """

    start_frame: int
    end_frame: int
    label: str
    provenance: Provenance
    confidence: float | None
    produced_at: datetime
    partition: int
    offset: int
    event_id: str
    _key: tuple = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        produced_at = self.produced_at
        if type(produced_at) is not datetime or produced_at.tzinfo is not UTC:
            produced_at = _utc(produced_at, f"event {self.event_id!r}")
            object.__setattr__(self, "produced_at", produced_at)
        object.__setattr__(self, "_key", (*_event_key(self), *_segment_key(self)))

    @property
    def key(self) -> tuple:
        """The precedence key: larger wins. Equal keys mean the same event and segment label."""
        return self._key

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame

    def with_range(self, start_frame: int, end_frame: int) -> Interval:
        # Same event, same key: copied rather than validated again (resolution makes many).
        piece = object.__new__(Interval)
        piece.__dict__.update(self.__dict__, start_frame=start_frame, end_frame=end_frame)
        return piece


def intervals_of(event: LabelEvent) -> list[Interval]:
    """The event's segments as (unresolved) intervals carrying its key; empty ranges dropped."""
    human = event.provenance == "human"
    base = {"provenance": event.provenance, "produced_at": event.produced_at,
            "partition": event.partition, "offset": event.offset, "event_id": event.event_id}
    key = _event_key(event)
    out = []
    for s in event.segments:
        if s.end_frame <= s.start_frame:
            continue
        # The event's fields are checked already: built like with_range, not validated again.
        iv = object.__new__(Interval)
        iv.__dict__.update(base, start_frame=s.start_frame, end_frame=s.end_frame,
                           label=s.label, confidence=None if human else s.confidence)
        iv.__dict__["_key"] = (*key, *_segment_key(iv))
        out.append(iv)
    return out


def _event_key(e: LabelEvent | Interval) -> tuple:
    """The event's part of the precedence key (see :attr:`Interval.key`)."""
    return (_RANK[e.provenance], e.produced_at, e.partition, e.offset, e.event_id)


def _segment_key(iv: Interval) -> tuple:
    return (iv.label, -1.0 if iv.confidence is None else iv.confidence)


def resolve_video(candidates: Iterable[Interval]) -> list[Interval]:
    """Per-frame maximum of the key over possibly overlapping intervals of one video.

    Returns sorted, non-overlapping intervals; adjacent pieces won by the same key are merged,
    so the result is canonical (the same for any order or duplication of the input).
    """
    cands = sorted({(c.key, c.start_frame, c.end_frame): c for c in candidates}.values(),
                   key=lambda c: c.key)
    if not cands:
        return []
    # rank = position in key order, so the heap compares integers, not datetimes.
    starts = sorted(((c.start_frame, rank) for rank, c in enumerate(cands)))
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
        if prev is not None and prev.end_frame == lo and prev.key == win.key:
            out[-1] = prev.with_range(prev.start_frame, hi)
        else:
            out.append(win.with_range(lo, hi))
    return out


def resolve(
    intervals_by_video: dict[str, list[Interval]], events: Iterable[LabelEvent]
) -> dict[str, list[Interval]]:
    """Apply ``events`` on top of already resolved intervals; return every video's intervals.

    Videos without new events are returned unchanged. Deduplication by ``event_id`` is implied:
    an event already applied wins or loses exactly the same frames again.
    """
    new: dict[str, list[Interval]] = defaultdict(list)
    for event in events:
        new[event.video_id].extend(intervals_of(event))
    out = dict(intervals_by_video)
    for video_id, extra in new.items():
        out[video_id] = resolve_video([*intervals_by_video.get(video_id, ()), *extra])
    return out


@dataclass(frozen=True)
class Segment:
    """A coalesced labelled interval without its key (a row of the ``segments`` table)."""

    start_frame: int
    end_frame: int
    label: str
    provenance: Provenance
    confidence: float | None


def coalesce(intervals: Iterable[Interval]) -> list[Segment]:
    """Merge adjacent intervals with the same label, provenance and confidence.

    Input must be sorted and non-overlapping (what :func:`resolve_video` returns).
    """
    return coalesce_rows((iv.start_frame, iv.end_frame, iv.label, iv.provenance, iv.confidence)
                         for iv in intervals)


def coalesce_rows(rows: Iterable[tuple[int, int, str, Provenance, float | None]]
                  ) -> list[Segment]:
    """:func:`coalesce` over ``(start_frame, end_frame, label, provenance, confidence)``
    tuples, for intervals read as table rows rather than as :class:`Interval` objects."""
    out: list[Segment] = []
    cur: list | None = None
    for start, end, label, provenance, confidence in rows:
        if (cur is not None and cur[1] == start and cur[2] == label and cur[3] == provenance
                and cur[4] == confidence):
            cur[1] = end
            continue
        if cur is not None:
            out.append(Segment(*cur))
        cur = [start, end, label, provenance, confidence]
    if cur is not None:
        out.append(Segment(*cur))
    return out


def untouched(starts: Sequence[int], ends: Sequence[int], new: Iterable[Interval]) -> list[bool]:
    """Which of a video's resolved intervals (sorted, non-overlapping ``[starts[i], ends[i])``)
    no interval of ``new`` overlaps.

    Those keep their frames and their key whatever ``new`` holds, and no piece resolved from
    the others can merge with them (a resolved piece next to one has another key), so
    resolving ``new`` on top of a video needs only the intervals that are not untouched:
    ``resolve_video(all + new)`` is the untouched ones plus ``resolve_video(others + new)``.
    """
    return untouched_by(starts, ends, ((iv.start_frame, iv.end_frame) for iv in new))


def untouched_by(starts: Sequence[int], ends: Sequence[int],
                 ranges: Iterable[tuple[int, int]]) -> list[bool]:
    """:func:`untouched`, with the new intervals given as ``(start_frame, end_frame)``."""
    spans: list[list[int]] = []  # the union of the ranges, sorted and disjoint
    for lo, hi in sorted(ranges):
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    his = [hi for _, hi in spans]
    out = []
    for start, end in zip(starts, ends, strict=True):
        i = bisect.bisect_right(his, start)  # the first span that ends after ``start``
        out.append(i == len(spans) or spans[i][0] >= end)
    return out


def check_event(event: LabelEvent, labels: Sequence[str], num_frames: int) -> None:
    """Raise BadInput naming the problem if ``event`` does not fit its video and taxonomy.

    Checks: at least one segment; every label in ``labels``; ``0 <= start < end <= num_frames``;
    model confidences in [0, 1]; no two segments of the event overlap.
    """
    def fail(problem: str, n: int | None = None) -> BadInput:
        at = "" if n is None else f", segment {n}"
        return BadInput(f"event {event.event_id!r} for video {event.video_id!r}{at}: {problem}")

    if not event.segments:
        raise fail("has no segments")
    model = event.provenance == "model"
    for n, s in enumerate(event.segments):
        if s.label not in labels:
            raise fail(f"unknown label {s.label!r}; known: {', '.join(labels)}", n)
        if not (isinstance(s.start_frame, int) and isinstance(s.end_frame, int)):
            raise fail("frame numbers must be integers", n)
        if s.start_frame < 0 or s.end_frame > num_frames:
            raise fail(f"range [{s.start_frame}, {s.end_frame}) is outside the video's "
                       f"{num_frames} frames [0, {num_frames})", n)
        if s.end_frame <= s.start_frame:
            raise fail(f"empty range [{s.start_frame}, {s.end_frame})", n)
        if model and s.confidence is not None and not 0.0 <= s.confidence <= 1.0:
            raise fail(f"confidence {s.confidence} is outside [0, 1]", n)
    ordered = event.segments
    if any(b.start_frame < a.start_frame for a, b in itertools.pairwise(ordered)):
        ordered = sorted(ordered, key=lambda s: (s.start_frame, s.end_frame))
    for a, b in itertools.pairwise(ordered):
        if b.start_frame < a.end_frame:
            raise fail(f"segments [{a.start_frame}, {a.end_frame}) and "
                       f"[{b.start_frame}, {b.end_frame}) overlap")


def frames_by(segments: Iterable[Segment | Interval], attr: str) -> dict[str, int]:
    """Total frames per value of ``attr`` ("label" or "provenance")."""
    totals: dict[str, int] = defaultdict(int)
    for s in segments:
        totals[getattr(s, attr)] += s.end_frame - s.start_frame
    return dict(totals)
