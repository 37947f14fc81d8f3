"""`videos` and `segments` tables, read-only SQL, and diffs between versions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from surgflow.data.labels import LabelEvent, LabelSegment
from surgflow.data.query import diff, query
from surgflow.data.registry import VideoRegistry
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.data.versions import DatasetStore
from surgflow.errors import BadInput

DS = "cholecystectomy"
T0 = datetime(2026, 11, 21, 8, tzinfo=UTC)


def ev(eid, vid, prov, segs, minutes=0, offset=0):
    return LabelEvent(eid, vid, prov, T0 + timedelta(minutes=minutes), 0, offset,
                      tuple(LabelSegment(*s) for s in segs))


@pytest.fixture
def loaded(surgflow_home: Path, synthetic_corpus) -> dict:
    """Registered synthetic videos and two versions of the cholecystectomy dataset."""
    reg = VideoRegistry(surgflow_home, [synthetic_corpus[0].path.parent.resolve()])
    records = [
        reg.register(str(v.path), DS, v.hospital, recorded_at=T0).record
        for v in synthetic_corpus[:4]
    ]
    store = DatasetStore(surgflow_home)
    a, b = records[0], records[1]
    store.commit(DS, videos=records[:3], offsets={}, events=[
        ev("m1", a.video_id, "model", [(0, 100, "Preparation", 0.9),
                                        (100, a.num_frames, "CalotTriangleDissection", 0.5)]),
        ev("m2", b.video_id, "model", [(0, 50, "Preparation", 0.8)]),
    ])
    store.commit(DS, videos=records, offsets={}, events=[
        ev("h1", a.video_id, "human", [(80, 120, "CalotTriangleDissection")], minutes=5),
        ev("m3", b.video_id, "model", [(50, 90, "Preparation", 0.8)], minutes=5),
    ])
    return {"home": surgflow_home, "store": store, "records": records, "a": a, "b": b}


def test_segments_are_the_latest_version_coalesced(loaded):
    a, b = loaded["a"], loaded["b"]
    rows = query(loaded["home"], "SELECT * FROM segments ORDER BY video_id, start_frame")
    assert list(rows[0]) == ["dataset", "version", "video_id", "start_frame", "end_frame",
                             "label", "provenance", "confidence"]
    got = [(r["video_id"], r["start_frame"], r["end_frame"], r["label"], r["provenance"],
            r["confidence"]) for r in rows]
    assert {r["version"] for r in rows} == {2}
    want = sorted([
        (a.video_id, 0, 80, "Preparation", "model", 0.9),
        (a.video_id, 80, 120, "CalotTriangleDissection", "human", None),
        (a.video_id, 120, a.num_frames, "CalotTriangleDissection", "model", 0.5),
        (b.video_id, 0, 90, "Preparation", "model", 0.8),  # two events, one interval
    ])
    assert got == want
    old = query(loaded["home"], "SELECT count(*) AS n FROM segments", versions={DS: 1})
    assert old == [{"n": 3}]


def test_videos_join_segments_and_values_are_json_ready(loaded):
    rows = query(loaded["home"], """
        SELECT v.source, sum(s.end_frame - s.start_frame) AS frames, min(v.recorded_at) AS at,
               avg(v.fps)::DECIMAL(9, 3) AS fps
        FROM segments s JOIN videos v USING (video_id) GROUP BY v.source ORDER BY v.source""")
    json.dumps(rows, allow_nan=False)
    a, b = loaded["a"], loaded["b"]
    by_source = {r["source"]: r["frames"] for r in rows}
    expected: dict[str, int] = {}
    expected[a.source] = expected.get(a.source, 0) + a.num_frames
    expected[b.source] = expected.get(b.source, 0) + 90
    assert by_source == expected
    assert rows[0]["at"].startswith("2026-11-21T08:00:00")
    assert query(loaded["home"], "SELECT 'nan'::DOUBLE AS x, 2::HUGEINT AS y") == [
        {"x": None, "y": 2}]
    videos = query(loaded["home"], "SELECT * FROM videos ORDER BY video_id")
    assert [v["video_id"] for v in videos] == sorted(r.video_id for r in loaded["records"])
    assert list(videos[0]) == ["video_id", "uri", "sha256", "procedure", "source", "recorded_at",
                               "num_frames", "fps", "width", "height"]


def test_segments_cover_every_dataset(loaded):
    ProcedureCatalog(loaded["home"]).add("appendectomy", ["Access", "Resection"])
    rec = loaded["records"][3].model_copy(update={"procedure": "appendectomy"})
    loaded["store"].commit("appendectomy", videos=[rec], offsets={},
                           events=[ev("x1", rec.video_id, "human", [(0, 10, "Access")])])
    rows = query(loaded["home"], "SELECT dataset, max(version) AS v, count(*) AS n "
                                 "FROM segments GROUP BY dataset ORDER BY dataset")
    assert rows == [{"dataset": "appendectomy", "v": 1, "n": 1}, {"dataset": DS, "v": 2, "n": 4}]


@pytest.mark.parametrize("sql", [
    "INSERT INTO segments VALUES ('x', 1, 'v', 0, 1, 'A', 'human', NULL)",
    "CREATE TABLE t AS SELECT * FROM segments",
    "DROP VIEW segments",
    "DELETE FROM videos",
    "UPDATE segments SET label = 'x'",
    "ATTACH 'evil.db' AS evil",
    "SET threads = 1",
    "SELECT 1; DROP VIEW segments",
    "INSTALL httpfs",
])
def test_writing_statements_are_rejected(loaded, sql):
    with pytest.raises(BadInput, match=r"read-only|exactly one"):
        query(loaded["home"], sql)


def test_no_file_can_be_written_or_read_outside_the_dataset(loaded, tmp_path):
    target = tmp_path / "leak.csv"
    with pytest.raises(BadInput):
        query(loaded["home"], f"COPY segments TO '{target}'")
    assert not target.exists()
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(BadInput, match="disabled"):
        query(loaded["home"], f"SELECT * FROM read_csv('{secret}')")
    with pytest.raises(BadInput, match="query failed"):
        query(loaded["home"], "SELECT nope FROM segments")


def test_query_on_an_empty_home(surgflow_home):
    assert query(surgflow_home, "SELECT count(*) AS n FROM segments") == [{"n": 0}]
    assert query(surgflow_home, "SELECT count(*) AS n FROM videos") == [{"n": 0}]


def test_diff_counts_videos_and_frames(loaded):
    a, b, recs = loaded["a"], loaded["b"], loaded["records"]
    d = diff(loaded["home"], (DS, 1), (DS, 2))
    assert d["videos_added"] == [recs[3].video_id] and d["videos_removed"] == []
    assert d["frames_added"] == 40  # b: 50..90
    assert d["frames_removed"] == 0
    assert d["frames_relabelled"] == 20  # a: 80..100 was Preparation, now Calot (human)
    assert d["frames_provenance_changed"] == 20  # a: 100..120 same label, now human
    assert {c["video_id"] for c in d["videos_changed"]} == {a.video_id, b.video_id}
    back = diff(loaded["home"], (DS, 2), (DS, 1))
    assert (back["frames_added"], back["frames_removed"]) == (0, 40)
    assert back["videos_removed"] == [recs[3].video_id]
    same = diff(loaded["home"], (DS, 2), (DS, None))
    assert same["same_content"] and same["videos_changed"] == []
