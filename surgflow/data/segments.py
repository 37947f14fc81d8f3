"""Reading a version's runs as one table, merging runs, and the derived ``segments`` table.

Pure data-file plumbing for :mod:`surgflow.data.versions`: which rows of which run are current
for a video (the latest run that has the video wins), how runs are merged, and the coalesced
``segments`` rows of SPEC §6 that queries read straight from one Parquet file.
"""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from surgflow.data import datafiles as df
from surgflow.data.datafiles import DataFile
from surgflow.storage import write_exclusive

SEGMENTS_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("version", pa.int64()), ("video_id", pa.string()),
    ("start_frame", pa.int64()), ("end_frame", pa.int64()), ("label", pa.string()),
    ("provenance", pa.string()), ("confidence", pa.float64()),
])


def latest_rows(dataset_dir: Path, runs: list[dict[str, DataFile]], kind: str,
                video_ids: list[str] | None = None) -> pa.Table:
    """Current ``videos`` or ``intervals`` rows over ``runs`` (optionally only some videos)."""
    parts: list[pa.Table] = []
    seen: pa.Array | None = None
    for run in reversed(runs):
        if kind not in run:
            continue
        t = (df.read_data_file(dataset_dir, run[kind]) if video_ids is None
             else df.read_data_file(dataset_dir, run[kind], "video_id", video_ids))
        if t.num_rows == 0:
            continue
        if seen is not None:
            t = t.filter(pc.invert(pc.is_in(t.column("video_id"), value_set=seen)))
        ids = pc.unique(t.column("video_id").combine_chunks()) if t.num_rows else None
        if ids is not None:
            seen = ids if seen is None else pa.concat_arrays([seen, ids])
        parts.append(t)
    if not parts:
        return df.SCHEMAS[kind].empty_table()
    return pa.concat_tables(parts).sort_by(df.SORT_KEYS[kind])


def read_latest(dataset_dir: Path, manifest, kind: str,
                video_ids: list[str] | None = None) -> pa.Table:
    """Current rows of ``kind`` in a manifest's version."""
    return latest_rows(dataset_dir, manifest.runs(), kind, video_ids)


def merge_runs(dataset_dir: Path, files: list[DataFile],
               new: dict[str, pa.Table]) -> list[DataFile]:
    """Append a new run (``{kind: table}``) to ``files``, merging it with trailing runs first.

    Like a binary counter, the new run absorbs the previous run while that one is no bigger:
    every row is rewritten O(log n) times over a dataset's history and a version has O(log n)
    runs. Only the final merged run is written; the parent's files are never touched.
    """
    runs = df.group_runs(files)
    tables = {k: t for k, t in new.items() if t.num_rows}
    while runs and sum(f.rows for f in runs[-1].values()) <= sum(t.num_rows
                                                                 for t in tables.values()):
        prev = runs.pop()
        for kind in ("videos", "intervals"):
            if kind in prev:
                old = df.read_data_file(dataset_dir, prev[kind])
                if kind in tables:
                    ids = pc.unique(tables[kind].column("video_id").combine_chunks())
                    old = old.filter(pc.invert(pc.is_in(old.column("video_id"), value_set=ids)))
                    tables[kind] = pa.concat_tables([old, tables[kind]])
                else:
                    tables[kind] = old
        if "events" in prev:
            old = df.read_data_file(dataset_dir, prev["events"])
            tables["events"] = (pa.concat_tables([old, tables["events"]]) if "events" in tables
                                else old)
    index = len(runs)
    written = {k: df.write_data_file(dataset_dir, k, t, index) for k, t in tables.items()}
    return [f for run in [*runs, written] for f in run.values()]


_COALESCE_SQL = """
WITH marked AS (
  SELECT video_id, start_frame, end_frame, label, provenance, confidence,
    CASE WHEN lag(end_frame) OVER w = start_frame AND lag(label) OVER w = label
          AND lag(provenance) OVER w = provenance
          AND lag(confidence) OVER w IS NOT DISTINCT FROM confidence
         THEN 0 ELSE 1 END AS brk
  FROM ivs WINDOW w AS (PARTITION BY video_id ORDER BY start_frame)
), grouped AS (
  SELECT *, sum(brk) OVER (PARTITION BY video_id ORDER BY start_frame
                           ROWS UNBOUNDED PRECEDING) AS grp
  FROM marked
)
SELECT $dataset AS dataset, $version AS version, video_id, min(start_frame) AS start_frame,
       max(end_frame) AS end_frame, any_value(label) AS label,
       any_value(provenance) AS provenance, any_value(confidence) AS confidence
FROM grouped GROUP BY video_id, grp ORDER BY video_id, start_frame
"""


def materialise_segments(dataset_dir: Path, manifest, path: Path) -> None:
    """Write the version's coalesced ``segments`` rows to ``path`` (no overwrite)."""
    ivs = read_latest(dataset_dir, manifest, "intervals")
    con = duckdb.connect()
    try:
        con.register("ivs", ivs)
        params = {"dataset": manifest.dataset, "version": manifest.version}
        table = con.sql(_COALESCE_SQL, params=params).to_arrow_table()
    finally:
        con.close()
    table = table.cast(SEGMENTS_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=65536)
    write_exclusive(path, buf.getvalue())
