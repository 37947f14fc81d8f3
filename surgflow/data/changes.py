"""Per-frame label resolution (SPEC §4), and what a commit does to the videos it touches, on
their intervals as table rows.

Every labelled frame of a video is decided by the event that wins it under one total order, the
*precedence key*: a human label beats a model label; among the same provenance the later
``produced_at`` wins (compared as an instant); a tie goes to the later ``(partition, offset)``
and then, only to keep the order total, to ``event_id``, label and confidence. Resolution is the
per-frame maximum of that key, so it is idempotent (re-applying an event changes nothing),
order-independent, and applying events incrementally on top of a resolved parent equals
resolving every event at once. Resolved intervals keep the key of the event that won them so
that later events can be resolved against them.

New events are resolved against the parent's resolved intervals of their videos. Only the
intervals a new event overlaps take part in the resolution; the rest (at catalog scale, most of
a video's intervals) are carried into the new run as they are (see
:func:`~surgflow.data.labels.untouched_by`), so the work follows the change rather than the
length of the videos it touches.

The resolution itself runs on Arrow columns (:func:`resolve_rows`): candidates are sorted by
the precedence key once, then each video's frame range is painted in key order, so no Python
object is made per interval. The tests check it against an independent implementation on
interval objects and against a per-frame reference.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from surgflow.data import datafiles as df
from surgflow.data.labels import LabelEvent, Segment, coalesce_rows, untouched_by

_ROW = ("start_frame", "end_frame", "label", "provenance", "confidence")


@dataclass(frozen=True)
class Change:
    """The touched videos' rows after a commit, and their coalesced segments before and after."""

    intervals: pa.Table  # every resolved interval of the touched videos that have labels
    after: dict[str, list[Segment]]
    frames_before: tuple[dict[str, int], dict[str, int]]  # by label, by provenance


def apply_events(before: pa.Table, events: list[LabelEvent]) -> Change:
    """Resolve ``events`` on top of ``before``, the parent's ``intervals`` rows (sorted by video
    and start frame) of the videos they name."""
    before = before.cast(df.INTERVALS_SCHEMA)
    new = event_rows(events)
    keep = pa.array(untouched_rows(before, new), pa.bool_())
    resolved = resolve_rows(pa.concat_tables([before.filter(pc.invert(keep)), new]))
    after = pa.concat_tables([before.filter(keep), resolved]).sort_by(df.SORT_KEYS["intervals"])
    return Change(after, _coalesced(after), (_frames(before, "label"),
                                             _frames(before, "provenance")))


def event_rows(events: list[LabelEvent]) -> pa.Table:
    """The events' segments as (unresolved) ``intervals`` rows carrying their event's key;
    empty ranges dropped, human rows without a confidence."""
    segments = [s for e in events for s in e.segments]
    owner = pa.array(np.repeat(np.arange(len(events)), [len(e.segments) for e in events]),
                     pa.int64())
    per_event = pa.table({
        "video_id": pa.array([e.video_id for e in events], pa.string()),
        "provenance": pa.array([e.provenance for e in events], pa.string()),
        "produced_at": pa.array([e.produced_at for e in events], df.TS),
        "partition": pa.array([e.partition for e in events], pa.int32()),
        "offset": pa.array([e.offset for e in events], pa.int64()),
        "event_id": pa.array([e.event_id for e in events], pa.string()),
    }).take(owner)
    human = pc.equal(per_event.column("provenance"), "human")
    confidence = pa.array([s.confidence for s in segments], pa.float64())
    cols = {"start_frame": pa.array([s.start_frame for s in segments], pa.int64()),
            "end_frame": pa.array([s.end_frame for s in segments], pa.int64()),
            "label": pa.array([s.label for s in segments], pa.string()),
            "confidence": pc.if_else(human, pa.scalar(None, pa.float64()), confidence)}
    table = pa.table({name: cols[name] if name in cols else per_event.column(name)
                      for name in df.INTERVALS_SCHEMA.names}, schema=df.INTERVALS_SCHEMA)
    return table.filter(pc.greater(table.column("end_frame"), table.column("start_frame")))


def untouched_rows(held: pa.Table, new: pa.Table) -> np.ndarray:
    """Which rows of ``held`` (resolved, sorted by video and start frame) no row of ``new`` of
    their video overlaps: :func:`~surgflow.data.labels.untouched_by` over tables (why those can
    be carried over unresolved is said there)."""
    out = np.ones(held.num_rows, bool)
    if held.num_rows == 0 or new.num_rows == 0:
        return out
    new = new.select(["video_id", "start_frame", "end_frame"]).sort_by("video_id")
    new_starts = new.column("start_frame").to_pylist()
    new_ends = new.column("end_frame").to_pylist()
    ranges = _runs(new.column("video_id"))
    held_starts = held.column("start_frame").to_pylist()
    held_ends = held.column("end_frame").to_pylist()
    for video, (a, b) in _runs(held.column("video_id")).items():
        if video in ranges:
            lo, hi = ranges[video]
            out[a:b] = untouched_by(held_starts[a:b], held_ends[a:b],
                                    zip(new_starts[lo:hi], new_ends[lo:hi], strict=True))
    return out


def _runs(column: pa.ChunkedArray) -> dict[str, tuple[int, int]]:
    """Each value of a sorted column and its rows ``[first, end)``."""
    firsts = np.flatnonzero(_changes(column))
    ends = [*firsts[1:].tolist(), len(column)]
    return dict(zip(column.take(pa.array(firsts)).to_pylist(),
                    zip(firsts.tolist(), ends, strict=True), strict=True))


#: the precedence key (see the module's docstring) as sort columns, after the video: a human
#: label beats a model label, then later ``produced_at``, ``partition``, ``offset``, and
#: ``event_id``, label, confidence (None as -1) to keep the order total
_KEY = ("_human", "produced_at", "partition", "offset", "event_id", "label", "_confidence")


def resolve_rows(candidates: pa.Table) -> pa.Table:
    """Per-frame maximum of the precedence key over possibly overlapping ``intervals`` rows,
    video by video: sorted, non-overlapping rows, adjacent pieces of one key merged, so the
    result is canonical (the same for any order or duplication of the candidates)."""
    if candidates.num_rows == 0:
        return candidates
    t = candidates.append_column(
        "_human", pc.equal(candidates.column("provenance"), "human")).append_column(
        "_confidence", pc.fill_null(candidates.column("confidence"), -1.0))
    t = t.take(pc.sort_indices(t, sort_keys=[(c, "ascending") for c in ("video_id", *_KEY)]))
    n = t.num_rows
    new_video = _changes(t.column("video_id"))
    new_key = new_video.copy()
    for c in _KEY:
        new_key |= _changes(t.column(c))
    key = np.cumsum(new_key) - 1  # the key's rank; ascending, equal for equal keys
    starts = t.column("start_frame").to_numpy()
    ends = t.column("end_frame").to_numpy()
    firsts = np.flatnonzero(new_video)
    rows, run_starts, run_ends = [], [], []
    for a, b in zip(firsts, [*firsts[1:], n], strict=True):
        s, e, k = starts[a:b], ends[a:b], key[a:b]
        bounds = np.unique(np.concatenate([s, e]))
        winner = np.full(len(bounds) - 1, -1, np.int64)  # per piece between two bounds
        # in ascending key order, so each piece ends up with the largest key covering it
        for lo, hi, kk in zip(np.searchsorted(bounds, s).tolist(),
                              np.searchsorted(bounds, e).tolist(), k.tolist(), strict=True):
            winner[lo:hi] = kk
        first = np.flatnonzero(np.concatenate([[True], winner[1:] != winner[:-1]]))
        run_key = winner[first]
        won = run_key >= 0  # pieces no candidate covers are no run
        rows.append(np.searchsorted(key, run_key[won]))  # a row of the winning key
        run_starts.append(bounds[first[won]])
        run_ends.append(bounds[np.append(first[1:], len(winner))[won]])
    out = t.take(pa.array(np.concatenate(rows)))
    cols = {"start_frame": pa.array(np.concatenate(run_starts), pa.int64()),
            "end_frame": pa.array(np.concatenate(run_ends), pa.int64())}
    return pa.table({name: cols[name] if name in cols else out.column(name)
                     for name in df.INTERVALS_SCHEMA.names}, schema=df.INTERVALS_SCHEMA)


def _changes(column: pa.ChunkedArray) -> np.ndarray:
    """Where a sorted column's value differs from the row before (the first row counts)."""
    values = column.combine_chunks()
    out = np.ones(len(values), bool)
    if len(values) > 1:
        out[1:] = pc.not_equal(values[1:], values[:-1]).to_numpy(zero_copy_only=False)
    return out


def _frames(table: pa.Table, column: str) -> dict[str, int]:
    """Labelled frames by ``column`` over interval rows."""
    frames = pc.subtract(table.column("end_frame"), table.column("start_frame"))
    sums = pa.table({"by": table.column(column), "frames": frames}).group_by("by").aggregate(
        [("frames", "sum")])
    return dict(zip(sums.column("by").to_pylist(), sums.column("frames_sum").to_pylist(),
                    strict=True))


def _coalesced(table: pa.Table) -> dict[str, list[Segment]]:
    """Each video's coalesced segments, from its sorted interval rows."""
    ids = table.column("video_id").to_pylist()
    rows = list(zip(*(table.column(c).to_pylist() for c in _ROW), strict=True))
    out: dict[str, list[Segment]] = {}
    start = 0
    for vid, group in itertools.groupby(ids):
        n = sum(1 for _ in group)
        out[vid] = coalesce_rows(rows[start:start + n])
        start += n
    return out
