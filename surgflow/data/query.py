"""Read-only SQL over datasets (SPEC §6 ``data query``) and version diffs.

Two tables: ``videos`` (every registered video) and ``segments`` (the coalesced resolved
intervals of the latest version of every dataset, or of chosen versions). ``segments`` is a view
over the versions' own data files (:func:`surgflow.data.segments.relation`): nothing is built
when a version is published or first read, and DuckDB streams what a query needs. Queries run
in an in-memory DuckDB whose file access is switched off except for those data files and whose
configuration is then locked; on top of that only a single SELECT statement is accepted, as
DuckDB's own parser classifies it. So a query can neither write files nor change the tables.
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

from surgflow.data.datafiles import QUERY_VIDEOS_SCHEMA, empty
from surgflow.data.registry import VideoRegistry
from surgflow.data.segments import SEGMENTS_SCHEMA, Relation
from surgflow.data.sql import check_read_only, lock_down, one_line
from surgflow.data.versions import DatasetStore
from surgflow.errors import BadInput


def registry_videos(home: Path) -> pa.Table:
    """Every registered video as the ``videos`` table."""
    records = VideoRegistry(home, []).list()
    cols = {n: [getattr(r, n) for r in records] for n in QUERY_VIDEOS_SCHEMA.names}
    return pa.table(cols, schema=QUERY_VIDEOS_SCHEMA)


def segment_relations(store: DatasetStore,
                      versions: dict[str, int | None] | None = None) -> list[Relation]:
    """``segments`` of the chosen ``{dataset: version}`` (default: latest of every dataset)."""
    chosen = versions if versions is not None else dict.fromkeys(store.datasets())
    return [store.relation(name, version) for name, version in sorted(chosen.items())]


def connect(home: Path, sql: str | None = None,
            versions: dict[str, int | None] | None = None) -> duckdb.DuckDBPyConnection:
    """A sandboxed connection with the ``segments`` and ``videos`` views.

    With ``sql`` given, ``videos`` is only built if ``sql`` names it (reading the registry is
    the slow part). The caller closes the connection.
    """
    relations = segment_relations(DatasetStore(home), versions)
    files = sorted({f for r in relations for f in r.files})
    con = duckdb.connect(config={"threads": 2})
    try:
        if relations:
            con.execute("CREATE VIEW segments AS "
                        + " UNION ALL ".join(f"({r.sql})" for r in relations))
        else:
            con.register("segments", empty(SEGMENTS_SCHEMA))
        if sql is None or "videos" in _table_names(sql):
            con.register("videos", registry_videos(home))
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
FROM totals t LEFT JOIN per_video p USING (video_id)
WHERE coalesce(t.in_b, 0) <> coalesce(p.common, 0) OR coalesce(t.in_a, 0) <> coalesce(p.common, 0)
   OR coalesce(p.relabelled, 0) <> 0 OR coalesce(p.reprovenanced, 0) <> 0
ORDER BY t.video_id
"""


def diff(home: Path, a: tuple[str, int | None], b: tuple[str, int | None]) -> dict:
    """What changed from ``a`` to ``b`` (each ``(dataset, version)``): videos added and
    removed, labelled frames added, removed, relabelled, and whose provenance changed.

    DuckDB reads both versions' files in place; only the changed videos reach Python."""
    store = DatasetStore(home)
    ma, mb = store.manifest(*a), store.manifest(*b)
    rels = {"seg_a": store.relation(ma.dataset, ma.version),
            "seg_b": store.relation(mb.dataset, mb.version),
            "vid_a": store.relation(ma.dataset, ma.version, "videos"),
            "vid_b": store.relation(mb.dataset, mb.version, "videos")}
    con = duckdb.connect(config={"threads": 2})
    try:
        for name, rel in rels.items():
            con.execute(f"CREATE VIEW {name} AS {rel.sql}")
        rows = con.execute(_DIFF_SQL).fetchall()
        added = [r[0] for r in con.execute(_ONLY_IN.format(x="vid_b", y="vid_a")).fetchall()]
        removed = [r[0] for r in con.execute(_ONLY_IN.format(x="vid_a", y="vid_b")).fetchall()]
    finally:
        con.close()
    changed = [
        {"video_id": r[0], "frames_added": int(r[1]), "frames_removed": int(r[2]),
         "frames_relabelled": int(r[3]), "frames_provenance_changed": int(r[4])}
        for r in rows
    ]
    total = {k: sum(c[k] for c in changed) for k in
             ("frames_added", "frames_removed", "frames_relabelled", "frames_provenance_changed")}
    return {
        "from": {"dataset": ma.dataset, "version": ma.version, "fingerprint": ma.fingerprint},
        "to": {"dataset": mb.dataset, "version": mb.version, "fingerprint": mb.fingerprint},
        "same_content": ma.fingerprint == mb.fingerprint,
        "videos_added": added, "videos_removed": removed,
        **total, "videos_changed": changed,
    }


_ONLY_IN = "SELECT video_id FROM {x} ANTI JOIN {y} USING (video_id) ORDER BY video_id"


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
