"""Reading a version's runs: current rows, merging runs, and the ``segments`` table as SQL.

Pure data-file plumbing for :mod:`surgflow.data.versions`: which rows of which run are current
for a video (the latest run that has the video wins), how runs are merged, and the SQL that
reads a version's ``videos`` or ``segments`` (SPEC §6) straight from its runs' files, so that
nothing is rebuilt when a version is published and DuckDB streams what a query needs.

Every run stores its videos' coalesced segments beside their intervals. Runs written before
segments were stored get theirs derived once from their intervals file, into
``cache/run-segments-<sha256 of the intervals file>.parquet``, shared by every version that
holds the run.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from surgflow.data import datafiles as df
from surgflow.data.datafiles import DataFile
from surgflow.data.sql import quote
from surgflow.storage import write_exclusive

SEGMENTS_SCHEMA = pa.schema([("dataset", pa.string()), ("version", pa.int64()),
                             *df.SEGMENTS_SCHEMA])
SEGMENT_COLUMNS = tuple(SEGMENTS_SCHEMA.names)


READ_THREADS = 4


def latest_rows(dataset_dir: Path, runs: list[dict[str, DataFile]], kind: str,
                video_ids: list[str] | None = None) -> pa.Table:
    """Current ``videos`` or ``intervals`` rows over ``runs`` (optionally only some videos)."""
    files = [run[kind] for run in reversed(runs) if kind in run]
    with ThreadPoolExecutor(READ_THREADS) as pool:  # reading and decoding release the GIL
        tables = list(pool.map(lambda f: (
            df.read_data_file(dataset_dir, f) if video_ids is None
            else df.read_data_file(dataset_dir, f, "video_id", video_ids)), files))
    parts: list[pa.Table] = []
    seen: pa.Array | None = None
    for t in tables:
        if t.num_rows == 0:
            continue
        if seen is not None:
            t = t.filter(pc.invert(pc.is_in(t.column("video_id"), value_set=seen)))
        ids = pc.unique(t.column("video_id").combine_chunks()) if t.num_rows else None
        if ids is not None:
            seen = ids if seen is None else pa.concat_arrays([seen, ids])
        parts.append(t)
    if not parts:
        return df.empty(df.SCHEMAS[kind])
    return pa.concat_tables(parts).sort_by(df.SORT_KEYS[kind])


def read_latest(dataset_dir: Path, manifest, kind: str,
                video_ids: list[str] | None = None) -> pa.Table:
    """Current rows of ``kind`` in a manifest's version."""
    return latest_rows(dataset_dir, manifest.runs(), kind, video_ids)


MAX_MERGE_ROWS = 4_000_000
"""A merge that would write a run bigger than this does not happen: the runs below stay as they
are, so a commit's memory and time stay bounded however big the dataset grows (a version then
has one run per ~MAX_MERGE_ROWS rows of history plus O(log n) small ones)."""


def merge_runs(dataset_dir: Path, files: list[DataFile],
               new: dict[str, pa.Table]) -> list[DataFile]:
    """Append a new run (``{kind: table}``) to ``files``, merging it with trailing runs first.

    Like a binary counter, the new run absorbs the previous run while that one is no bigger:
    every row is rewritten O(log n) times over a dataset's history and a version has O(log n)
    runs. Only the final merged run is written; the parent's files are never touched.
    """
    runs = df.group_runs(files)
    tables = {k: t for k, t in new.items() if t.num_rows or k == "replaced"}
    size = sum(t.num_rows for t in tables.values())
    while runs and (prev_size := _rows(runs[-1])) <= size and prev_size + size <= MAX_MERGE_ROWS:
        prev = runs.pop()
        size += prev_size
        for kind in df.PER_VIDEO:
            old = (derived_segments(dataset_dir, prev) if kind == "segments"
                   else df.read_data_file(dataset_dir, prev[kind]) if kind in prev else None)
            if old is None:
                continue
            if kind in tables:
                ids = pc.unique(tables[kind].column("video_id").combine_chunks())
                old = old.filter(pc.invert(pc.is_in(old.column("video_id"), value_set=ids)))
                tables[kind] = pa.concat_tables([old, tables[kind]])
            else:
                tables[kind] = old
        if "replaced" in tables:  # what either run superseded; all of a run that predates them
            old = (df.read_data_file(dataset_dir, prev["replaced"]) if "replaced" in prev
                   else df.read_data_file(dataset_dir, prev["videos"]).select(["video_id"])
                   if "videos" in prev else df.empty(df.REPLACED_SCHEMA))
            both = pa.concat_tables([old, tables["replaced"]]).column("video_id")
            tables["replaced"] = pa.table({"video_id": pc.unique(both.combine_chunks())})
        if "events" in prev:
            old = df.read_data_file(dataset_dir, prev["events"])
            tables["events"] = (pa.concat_tables([old, tables["events"]]) if "events" in tables
                                else old)
    index = len(runs)
    written = {k: df.write_data_file(dataset_dir, k, t, index) for k, t in tables.items()}
    return [f for run in [*runs, written] for f in run.values()]


def _rows(run: dict[str, DataFile]) -> int:
    return sum(f.rows for f in run.values())


_COALESCE_SQL = """
WITH marked AS (
  SELECT video_id, start_frame, end_frame, label, provenance, confidence,
    CASE WHEN lag(end_frame) OVER w = start_frame AND lag(label) OVER w = label
          AND lag(provenance) OVER w = provenance
          AND lag(confidence) OVER w IS NOT DISTINCT FROM confidence
         THEN 0 ELSE 1 END AS brk
  FROM read_parquet({path}) WINDOW w AS (PARTITION BY video_id ORDER BY start_frame)
), grouped AS (
  SELECT *, sum(brk) OVER (PARTITION BY video_id ORDER BY start_frame
                           ROWS UNBOUNDED PRECEDING) AS grp
  FROM marked
)
SELECT video_id, min(start_frame) AS start_frame, max(end_frame) AS end_frame,
       any_value(label) AS label, any_value(provenance) AS provenance,
       any_value(confidence) AS confidence
FROM grouped GROUP BY video_id, grp ORDER BY video_id, start_frame
"""


def derived_path(dataset_dir: Path, intervals: DataFile) -> Path:
    """Where the segments derived from a run's ``intervals`` file are kept."""
    return dataset_dir / "cache" / f"run-segments-{intervals.sha256}.parquet"


def segments_file(dataset_dir: Path, run: dict[str, DataFile]) -> Path | None:
    """The file of a run's segments (derived once from its intervals for a run written before
    runs stored them); None for a run without labels."""
    if "segments" in run:
        return dataset_dir / run["segments"].path
    if "intervals" not in run:
        return None
    path = derived_path(dataset_dir, run["intervals"])
    if not path.is_file():
        table = _coalesced(dataset_dir / run["intervals"].path)
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=df.ROW_GROUP, compression="zstd")
        write_exclusive(path, buf.getvalue())
    return path


def derived_segments(dataset_dir: Path, run: dict[str, DataFile]) -> pa.Table | None:
    path = segments_file(dataset_dir, run)
    return None if path is None else pq.read_table(path, schema=df.SEGMENTS_SCHEMA)


def _coalesced(intervals_path: Path) -> pa.Table:
    con = duckdb.connect(config={"threads": 1})
    try:
        return con.sql(_COALESCE_SQL.format(path=quote(str(intervals_path)))).to_arrow_table(
        ).cast(df.SEGMENTS_SCHEMA)
    finally:
        con.close()


@dataclass(frozen=True)
class Relation:
    """A SQL query that reads rows of a version straight from its data files, and those files
    (what a sandboxed connection must be allowed to read)."""

    sql: str
    files: tuple[str, ...]


def relation(dataset_dir: Path, manifest, kind: str) -> Relation:
    """The version's current ``videos`` rows, or its ``segments`` rows (SPEC §6, with the
    ``dataset`` and ``version`` columns), as SQL over its runs' files.

    A video's rows come from the latest run that has the video: a run's rows are kept unless
    a later run supersedes their video (its ``replaced`` file names it; a run written before
    runs recorded that counts as superseding all of its videos).
    Nothing is read until the SQL runs, and DuckDB then streams it.
    """
    schema = df.VIDEOS_SCHEMA if kind == "videos" else SEGMENTS_SCHEMA
    parts: list[tuple[int, Path | None, Path]] = []  # (run, rows, what the run supersedes)
    for i, run in enumerate(manifest.runs()):
        if "videos" not in run:
            continue
        path = dataset_dir / run["videos"].path if kind == "videos" else segments_file(
            dataset_dir, run)
        replaced = run.get("replaced")
        if replaced is not None and replaced.rows == 0:
            superseded = None
        else:  # a run written before runs recorded it may supersede any of its videos
            superseded = dataset_dir / (replaced or run["videos"]).path
        if path is not None or superseded is not None:
            parts.append((i, path, superseded))
    if kind == "videos":
        cols = ", ".join(f'"{c}"' for c in schema.names)
    else:
        cols = (f"{quote(manifest.dataset)} AS dataset, {int(manifest.version)}::BIGINT AS "
                "version, " + ", ".join(f'"{c}"' for c in df.SEGMENTS_SCHEMA.names))
    selects = []
    for n, (_, path, _) in enumerate(parts):
        if path is None:
            continue
        select = f"SELECT {cols} FROM read_parquet({quote(str(path))})"
        later = [quote(str(sup)) for _, _, sup in parts[n + 1:] if sup is not None]
        if later:  # the videos later runs supersede: usually a few, a small hash table
            select += (f" ANTI JOIN (SELECT video_id FROM read_parquet([{', '.join(later)}])) "
                       "USING (video_id)")
        selects.append(select)
    if not selects:
        return Relation(_empty(schema), ())
    files = tuple(sorted({str(p) for _, path, sup in parts for p in (path, sup) if p}))
    return Relation(" UNION ALL ".join(selects), files)


def _empty(schema: pa.Schema) -> str:
    types = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER",
             pa.float64(): "DOUBLE", df.TS: "TIMESTAMPTZ"}
    cols = ", ".join(f'NULL::{types[f.type]} AS "{f.name}"' for f in schema)
    return f"SELECT {cols} WHERE false"


ORDER = {"videos": "video_id", "segments": "video_id, start_frame"}


def run_sql(rel: Relation, order_by: str | None = None) -> pa.Table:
    """The rows of ``rel`` as one Arrow table (for callers that need them all in memory)."""
    con = duckdb.connect(config={"threads": 2})
    try:
        sql = rel.sql + (f" ORDER BY {order_by}" if order_by else "")
        return con.sql(f"SELECT * FROM ({sql})").to_arrow_table()
    finally:
        con.close()
