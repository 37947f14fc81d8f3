"""Label events and resolved intervals (SPEC §4), pure: no I/O.

A :class:`LabelEvent` is one message's segments for one video; :func:`check_event` says whether
it fits its video and taxonomy. An :class:`Interval` is a resolved frame range with the fields
of the event that won it, and a :class:`Segment` is the same range without them, merged with
its neighbours (:func:`coalesce_rows`) for tables and statistics. Which event wins a frame is
decided in one place, :mod:`surgflow.data.changes`, on Arrow columns.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from surgflow.errors import BadInput

Provenance = Literal["human", "model"]
PROVENANCES: tuple[Provenance, ...] = ("human", "model")


def as_utc(ts: datetime) -> datetime:
    """``ts`` as a UTC instant (so ``Z`` and ``+00:00`` compare equal); ValueError if naive."""
    if type(ts) is datetime and ts.tzinfo is UTC:  # already one: what every event holds
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
        if self.provenance not in PROVENANCES:
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


@dataclass(frozen=True)
class Interval:
    """A resolved half-open frame range and the event that won it (a row of the ``intervals``
    table).

    ``confidence`` is None for human labels. ``produced_at``, ``partition``, ``offset`` and
    ``event_id`` are the winning event's, which later events are resolved against.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "produced_at", _utc(self.produced_at, f"event {self.event_id!r}"))


@dataclass(frozen=True)
class Segment:
    """A coalesced labelled interval without the event that won it (a ``segments`` row)."""

    start_frame: int
    end_frame: int
    label: str
    provenance: Provenance
    confidence: float | None


def coalesce_rows(rows: Iterable[tuple[int, int, str, Provenance, float | None]]
                  ) -> list[Segment]:
    """Merge adjacent ``(start_frame, end_frame, label, provenance, confidence)`` rows with the
    same label, provenance and confidence into segments.

    Rows must be one video's resolved intervals, sorted and non-overlapping."""
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


def untouched_by(starts: Sequence[int], ends: Sequence[int],
                 ranges: Iterable[tuple[int, int]]) -> list[bool]:
    """Which of a video's resolved intervals (sorted, non-overlapping ``[starts[i], ends[i])``)
    none of the new ``(start_frame, end_frame)`` ranges overlaps.

    Those keep their frames and their winner whatever the new events hold, and no piece
    resolved from the others can merge with them (a resolved piece next to one has another
    winner), so resolving new events on top of a video needs only the intervals that are not
    untouched: resolving all of them plus the new ones gives the untouched ones plus the
    resolution of the others plus the new ones.
    """
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
