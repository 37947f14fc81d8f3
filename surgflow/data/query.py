"""Read-only SQL over datasets (SPEC §6 ``data query``) and version diffs.

Two tables: ``videos`` (every registered video) and ``segments`` (the coalesced resolved
intervals of the latest version of every dataset, or of chosen versions). Queries run in an
in-memory DuckDB whose file access is switched off except for the segment files themselves and
whose configuration is then locked; on top of that only a single SELECT statement is accepted,
as DuckDB's own parser classifies it. So a query can neither write files nor change the tables.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from surgflow.data.registry import VideoRegistry
from surgflow.data.segments import SEGMENTS_SCHEMA
from surgflow.data.sql import check_read_only, lock_down, one_line, quote
from surgflow.data.versions import DatasetStore
from surgflow.errors import BadInput

VIDEOS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("uri", pa.string()), ("sha256", pa.string()),
    ("procedure", pa.string()), ("source", pa.string()),
    ("recorded_at", pa.timestamp("us", tz="UTC")), ("num_frames", pa.int64()),
    ("fps", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
])


def registry_videos(home: Path) -> pa.Table:
    """Every registered video as the ``videos`` table."""
    records = VideoRegistry(home, []).list()
    cols = {n: [getattr(r, n) for r in records] for n in VIDEOS_SCHEMA.names}
    return pa.table(cols, schema=VIDEOS_SCHEMA)


def segment_files(store: DatasetStore, versions: dict[str, int | None] | None = None) -> list[Path]:
    """Segment files of the chosen ``{dataset: version}`` (default: latest of every dataset)."""
    chosen = versions if versions is not None else dict.fromkeys(store.datasets())
    return [store.segments_path(name, version) for name, version in sorted(chosen.items())]


def connect(home: Path, sql: str | None = None,
            versions: dict[str, int | None] | None = None) -> duckdb.DuckDBPyConnection:
    """A sandboxed connection with the ``segments`` and ``videos`` views.

    With ``sql`` given, ``videos`` is only built if ``sql`` names it (reading the registry is
    the slow part). The caller closes the connection.
    """
    store = DatasetStore(home)
    files = [str(p) for p in segment_files(store, versions)]
    con = duckdb.connect(config={"threads": 2})
    try:
        listed = ", ".join(quote(f) for f in files)
        if not files:
            con.register("segments", SEGMENTS_SCHEMA.empty_table())
        if sql is None or "videos" in _table_names(sql):
            con.register("videos", registry_videos(home))
        if files:
            con.execute(f"CREATE VIEW segments AS SELECT * FROM read_parquet([{listed}])")
        lock_down(con, files)
    except BaseException:
        con.close()
        raise
    return con


def query(home: Path, sql: str, versions: dict[str, int | None] | None = None) -> list[dict]:
    """Run one read-only SELECT; rows as dicts with JSON-friendly values."""
    check_read_only(sql)
    con = connect(home, sql, versions)
    try:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [{n: _plain(v) for n, v in zip(names, row, strict=True)}
                for row in cursor.fetchall()]
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
            duckdb.PermissionException, duckdb.InvalidInputException,
            duckdb.ConversionException) as e:
        raise BadInput(f"query failed: {one_line(e)}") from e
    finally:
        con.close()


_DIFF_SQL = """
WITH overlap AS (
  SELECT a.video_id,
    least(a.end_frame, b.end_frame) - greatest(a.start_frame, b.start_frame) AS frames,
    a.label <> b.label AS relabelled,
    a.label = b.label AND a.provenance <> b.provenance AS reprovenanced
  FROM seg_a a JOIN seg_b b ON a.video_id = b.video_id
    AND a.start_frame < b.end_frame AND b.start_frame < a.end_frame
), per_video AS (
  SELECT video_id, sum(frames) AS common, sum(frames) FILTER (relabelled) AS relabelled,
         sum(frames) FILTER (reprovenanced) AS reprovenanced
  FROM overlap GROUP BY video_id
), totals AS (
  SELECT video_id, sum(end_frame - start_frame) FILTER (side = 'a') AS in_a,
         sum(end_frame - start_frame) FILTER (side = 'b') AS in_b
  FROM (SELECT *, 'a' AS side FROM seg_a UNION ALL SELECT *, 'b' AS side FROM seg_b)
  GROUP BY video_id
)
SELECT t.video_id,
  coalesce(t.in_b, 0) - coalesce(p.common, 0) AS frames_added,
  coalesce(t.in_a, 0) - coalesce(p.common, 0) AS frames_removed,
  coalesce(p.relabelled, 0) AS frames_relabelled,
  coalesce(p.reprovenanced, 0) AS frames_provenance_changed
FROM totals t LEFT JOIN per_video p USING (video_id) ORDER BY t.video_id
"""


def diff(home: Path, a: tuple[str, int | None], b: tuple[str, int | None]) -> dict:
    """What changed from ``a`` to ``b`` (each ``(dataset, version)``): videos added and
    removed, labelled frames added, removed, relabelled, and whose provenance changed."""
    store = DatasetStore(home)
    ma, mb = store.manifest(*a), store.manifest(*b)
    va = set(store.videos_table(ma.dataset, ma.version).column("video_id").to_pylist())
    vb = set(store.videos_table(mb.dataset, mb.version).column("video_id").to_pylist())
    con = duckdb.connect()
    try:
        con.register("seg_a", store.segments_table(ma.dataset, ma.version))
        con.register("seg_b", store.segments_table(mb.dataset, mb.version))
        rows = con.execute(_DIFF_SQL).fetchall()
    finally:
        con.close()
    changed = [
        {"video_id": r[0], "frames_added": int(r[1]), "frames_removed": int(r[2]),
         "frames_relabelled": int(r[3]), "frames_provenance_changed": int(r[4])}
        for r in rows if any(r[1:])
    ]
    total = {k: sum(c[k] for c in changed) for k in
             ("frames_added", "frames_removed", "frames_relabelled", "frames_provenance_changed")}
    return {
        "from": {"dataset": ma.dataset, "version": ma.version, "fingerprint": ma.fingerprint},
        "to": {"dataset": mb.dataset, "version": mb.version, "fingerprint": mb.fingerprint},
        "same_content": ma.fingerprint == mb.fingerprint,
        "videos_added": sorted(vb - va), "videos_removed": sorted(va - vb),
        **total, "videos_changed": changed,
    }


def _table_names(sql: str) -> set[str]:
    try:
        return {n.lower() for n in duckdb.get_table_names(sql)}
    except duckdb.Error:
        return {"videos"}


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN or infinity
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v
