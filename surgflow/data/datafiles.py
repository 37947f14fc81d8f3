"""The Parquet data files of dataset versions: schemas, conversions, content-addressed writes.

A version's data is a list of *runs*; each run holds up to four files:

- ``videos``: one row per video the run adds or changes (its snapshot and content hash);
- ``intervals``: every resolved interval (with the winning event's key) of those videos;
- ``segments``: the same videos' coalesced intervals, the rows of the ``segments`` table
  (SPEC §6) without the ``dataset`` and ``version`` columns a reader adds;
- ``replaced``: the ids of those videos that an earlier run already held (the rows this run
  supersedes; written even when empty, so that a reader knows the run records them);
- ``events``: the ``event_id`` of every event the run applied.

For a video, the latest run that has a row for it is authoritative (a video's labelled frames
only ever grow, so a run that changes a video always has rows for it). Files are named by the
sha256 of their bytes and written with the no-overwrite primitive, so a data file never changes.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, model_validator

from surgflow.data.labels import Interval, Segment
from surgflow.data.registry import VideoRecord
from surgflow.storage import write_exclusive

Kind = Literal["videos", "intervals", "segments", "replaced", "events"]
KINDS: tuple[Kind, ...] = ("videos", "intervals", "segments", "replaced", "events")
PER_VIDEO: tuple[Kind, ...] = ("videos", "intervals", "segments")  # latest run of a video wins
ROW_GROUP = 4096  # small row groups let a filter on video_id / event_id skip most of a file
SCAN_ROW_GROUP = 65536  # segments are scanned by queries and views, never looked up by id

TS = pa.timestamp("us", tz="UTC")
VIDEOS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("uri", pa.string()), ("path", pa.string()),
    ("sha256", pa.string()), ("procedure", pa.string()), ("source", pa.string()),
    ("recorded_at", TS), ("num_frames", pa.int64()), ("fps", pa.float64()),
    ("width", pa.int32()), ("height", pa.int32()), ("split", pa.string()),
    ("content_hash", pa.string()),
])
INTERVALS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("start_frame", pa.int64()), ("end_frame", pa.int64()),
    ("label", pa.string()), ("provenance", pa.string()), ("confidence", pa.float64()),
    ("produced_at", TS), ("partition", pa.int32()), ("offset", pa.int64()),
    ("event_id", pa.string()),
])
SEGMENTS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("start_frame", pa.int64()), ("end_frame", pa.int64()),
    ("label", pa.string()), ("provenance", pa.string()), ("confidence", pa.float64()),
])
QUERY_VIDEOS_SCHEMA = pa.schema([VIDEOS_SCHEMA.field(c) for c in (
    "video_id", "uri", "sha256", "procedure", "source", "recorded_at", "num_frames", "fps",
    "width", "height")])
"""The ``videos`` table of ``surgflow data query`` (SPEC §6) and of view filters."""
EVENTS_SCHEMA = pa.schema([("event_id", pa.string()), ("video_id", pa.string())])
REPLACED_SCHEMA = pa.schema([("video_id", pa.string())])
SCHEMAS: dict[str, pa.Schema] = {
    "videos": VIDEOS_SCHEMA, "intervals": INTERVALS_SCHEMA, "segments": SEGMENTS_SCHEMA,
    "replaced": REPLACED_SCHEMA, "events": EVENTS_SCHEMA,
}
SORT_KEYS: dict[str, list[tuple[str, str]]] = {
    "videos": [("video_id", "ascending")],
    "intervals": [("video_id", "ascending"), ("start_frame", "ascending")],
    "segments": [("video_id", "ascending"), ("start_frame", "ascending")],
    "replaced": [("video_id", "ascending")],
    "events": [("event_id", "ascending")],
}


class DataFile(BaseModel, frozen=True):
    """A data file of a version: path relative to the dataset folder, hash, rows, kind, run."""

    path: str
    sha256: str
    rows: int
    kind: Kind
    run: int


def empty(schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` with no rows (``Schema.empty_table`` imports pandas: 0.5 s)."""
    return pa.Table.from_batches([], schema=schema)


def group_runs(files: list[DataFile]) -> list[dict[str, DataFile]]:
    """Data files grouped by run, oldest first: ``[{kind: DataFile}]``."""
    out: list[dict[str, DataFile]] = [{} for _ in range(1 + max((f.run for f in files),
                                                                default=-1))]
    for f in files:
        out[f.run][f.kind] = f
    return out


class DatasetVideo(BaseModel):
    """A video as a dataset version holds it: the registry record it was committed with, the
    split it belongs to and the hash of its labelled content.

    The record's fields read through: ``snapshot.num_frames`` is ``snapshot.record.num_frames``.
    A ``videos`` file keeps the record's columns (not the registry's ``size_bytes`` and
    ``registered_at``) beside ``split`` and ``content_hash``; such a flat row builds a snapshot.
    """

    model_config = ConfigDict(frozen=True)

    record: VideoRecord
    split: str
    content_hash: str

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        if isinstance(data, dict) and "record" not in data:
            own = cls.model_fields.keys() - {"record"}
            return {"record": {k: v for k, v in data.items() if k not in own},
                    **{k: v for k, v in data.items() if k in own}}
        return data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "record":
            return super().__getattr__(name)
        return getattr(self.record, name)


def videos_table(videos: list[DatasetVideo]) -> pa.Table:
    cols = {name: [getattr(v, name) for v in videos] for name in VIDEOS_SCHEMA.names}
    cols["recorded_at"] = [_aware(t) for t in cols["recorded_at"]]
    return pa.table(cols, schema=VIDEOS_SCHEMA)


def table_videos(table: pa.Table) -> dict[str, DatasetVideo]:
    return {row["video_id"]: DatasetVideo(**row) for row in table.to_pylist()}


def intervals_table(intervals: dict[str, list[Interval]]) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in INTERVALS_SCHEMA.names}
    for video_id in sorted(intervals):
        for iv in intervals[video_id]:
            cols["video_id"].append(video_id)
            for name in INTERVALS_SCHEMA.names[1:]:
                cols[name].append(getattr(iv, name))
    return pa.table(cols, schema=INTERVALS_SCHEMA)


def table_intervals(table: pa.Table) -> dict[str, list[Interval]]:
    out: dict[str, list[Interval]] = defaultdict(list)
    cols = [table.column(n).to_pylist() for n in INTERVALS_SCHEMA.names]
    for video_id, *rest in zip(*cols, strict=True):
        out[video_id].append(Interval(*rest))
    return dict(out)


def segments_table(segments: dict[str, list[Segment]]) -> pa.Table:
    """The ``segments`` data file of coalesced intervals by video."""
    rows = [(vid, s) for vid in sorted(segments) for s in segments[vid]]
    return pa.table({
        "video_id": [vid for vid, _ in rows],
        **{name: [getattr(s, name) for _, s in rows] for name in SEGMENTS_SCHEMA.names[1:]},
    }, schema=SEGMENTS_SCHEMA)


def events_table(pairs: list[tuple[str, str]]) -> pa.Table:
    return pa.table(
        {"event_id": [e for e, _ in pairs], "video_id": [v for _, v in pairs]},
        schema=EVENTS_SCHEMA,
    )


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def write_data_file(dataset_dir: Path, kind: Kind, table: pa.Table, run: int) -> DataFile:
    """Sort, encode and publish ``table`` as ``data/<sha256>.parquet`` (no overwrite)."""
    table = table.cast(SCHEMAS[kind]).sort_by(SORT_KEYS[kind])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd",
                   row_group_size=SCAN_ROW_GROUP if kind == "segments" else ROW_GROUP)
    data = sink.getvalue().to_pybytes()
    digest = hashlib.sha256(data).hexdigest()
    rel = f"data/{digest}.parquet"
    path = dataset_dir / rel
    if not write_exclusive(path, data):
        # Same content already there (maybe an orphan of a lost race): refresh its age so that
        # gc's grace period protects it until the manifest that references it is published.
        os.utime(path)
    return DataFile(path=rel, sha256=digest, rows=table.num_rows, kind=kind, run=run)


def read_data_file(
    dataset_dir: Path, f: DataFile, column: str | None = None, values: list[str] | None = None
) -> pa.Table:
    """Read a data file, optionally only the rows whose ``column`` is in ``values``.

    Files are sorted by that column (``video_id``, or ``event_id`` for events), so only the
    row groups whose min/max statistics can hold one of ``values`` are read.
    """
    path = dataset_dir / f.path
    if column is None:
        return pq.read_table(path, schema=SCHEMAS[f.kind])
    wanted = sorted(set(values or ()))
    pf = pq.ParquetFile(path)
    index = pf.schema_arrow.get_field_index(column)
    groups = []
    for g in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(g).column(index).statistics
        if stats is None or not stats.has_min_max:
            groups.append(g)
            continue
        i = bisect.bisect_left(wanted, stats.min)
        if i < len(wanted) and wanted[i] <= stats.max:
            groups.append(g)
    table = pf.read_row_groups(groups).cast(SCHEMAS[f.kind]) if groups else empty(
        SCHEMAS[f.kind])
    return table.filter(pc.is_in(table.column(column), value_set=pa.array(wanted, pa.string())))
