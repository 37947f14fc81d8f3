"""What a commit does to the videos it touches, on their intervals as table rows.

New events are resolved against the parent's resolved intervals of their videos. Only the
intervals a new event overlaps become :class:`~surgflow.data.labels.Interval` objects and go
through :func:`~surgflow.data.labels.resolve_video`; the rest (at catalog scale, most of a video's
intervals) stay Arrow rows and are carried into the new run as they are (see
:func:`~surgflow.data.labels.untouched`), so the Python work follows the change rather than the
length of the videos it touches.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from surgflow.data import datafiles as df
from surgflow.data.labels import (
    Interval,
    LabelEvent,
    Segment,
    coalesce_rows,
    intervals_of,
    resolve_video,
    untouched,
)

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
    new: dict[str, list[Interval]] = defaultdict(list)
    for e in events:
        new[e.video_id].extend(intervals_of(e))
    ids = before.column("video_id").to_pylist()
    starts = before.column("start_frame").to_pylist()
    ends = before.column("end_frame").to_pylist()
    keep: list[bool] = []
    for vid, rows in itertools.groupby(range(len(ids)), key=ids.__getitem__):
        rows = list(rows)
        keep += untouched(starts[rows[0]:rows[-1] + 1], ends[rows[0]:rows[-1] + 1],
                          new.get(vid, ()))
    touched = before.filter(pa.array([not k for k in keep], pa.bool_())) if ids else before
    held = df.table_intervals(touched)
    resolved = {vid: resolve_video([*held.get(vid, ()), *ivs]) for vid, ivs in new.items()}
    carried = before.filter(pa.array(keep, pa.bool_())) if ids else before
    after = pa.concat_tables([carried, df.intervals_table(resolved)]).sort_by(
        df.SORT_KEYS["intervals"])
    return Change(after, _coalesced(after), (_frames(before, "label"),
                                             _frames(before, "provenance")))


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
