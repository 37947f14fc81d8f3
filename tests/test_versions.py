"""Immutable dataset versions: commit, rebase on a lost race, crash safety, gc, splits."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from surgflow.data.labels import LabelEvent, LabelSegment
from surgflow.data.registry import VideoRecord
from surgflow.data.splits import SPLITS, split_of
from surgflow.data.versions import DatasetStore, parse_ref
from surgflow.errors import BadInput, NotFound, UnknownName
from surgflow.storage import write_exclusive
from tests.precedence_oracle import coalesce, resolve

DS = "cholecystectomy"
PHASES = ("Preparation", "CalotTriangleDissection", "ClippingCutting")
T0 = datetime(2026, 11, 20, tzinfo=UTC)


def rec(i: int, frames: int = 1000, source: str | None = None) -> VideoRecord:
    return VideoRecord(
        video_id=f"case-{i:04d}", uri=f"/videos/case-{i:04d}.mp4",
        path=f"/videos/case-{i:04d}.mp4", sha256=f"{i:064x}", size_bytes=1, procedure=DS,
        source=source or ("hospital-a" if i % 2 else "hospital-b"), recorded_at=T0,
        num_frames=frames, fps=25.0, width=224, height=224, duration_s=frames / 25,
        registered_at=T0,
    )


def model_event(eid, video, segs, minutes=0, partition=0, offset=0):
    return LabelEvent(eid, video, "model", T0 + timedelta(minutes=minutes), partition, offset,
                      tuple(LabelSegment(a, b, lab, c) for a, b, lab, c in segs))


def human_event(eid, video, segs, minutes=0, partition=1, offset=0):
    return LabelEvent(eid, video, "human", T0 + timedelta(minutes=minutes), partition, offset,
                      tuple(LabelSegment(a, b, lab) for a, b, lab in segs))


def random_events(rnd: random.Random, n: int, videos: list[VideoRecord]) -> list[LabelEvent]:
    out = []
    for i in range(n):
        v = rnd.choice(videos)
        segs = []
        for _ in range(rnd.randint(1, 3)):
            a = rnd.randrange(0, v.num_frames - 1)
            segs.append((a, rnd.randint(a + 1, v.num_frames), rnd.choice(PHASES)))
        if rnd.random() < 0.3:
            out.append(human_event(f"h{i}", v.video_id, segs[:1], rnd.randint(0, 5), 1, i))
        else:
            out.append(model_event(f"m{i}", v.video_id, [(*s, rnd.choice([0.3, 0.9]))
                                                          for s in segs[:1]],
                                   rnd.randint(0, 5), 0, i))
    return out


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "home")


def test_first_commit_creates_version_one_with_spec_statistics(store):
    vids = [rec(1), rec(2), rec(3)]
    r = store.commit(DS, videos=vids, offsets={"surgflow.inference:0": 2}, events=[
        model_event("m1", "case-0001", [(0, 600, "Preparation", 0.9),
                                        (600, 1000, "ClippingCutting", 0.4)]),
        human_event("h1", "case-0001", [(500, 700, "Preparation")]),
    ])
    assert (r.version, r.parent, r.applied, r.duplicates, r.videos_added) == (1, None, 2, 0, 3)
    show = store.manifest(DS).show()
    assert set(show) == {"dataset", "version", "parent", "created_at", "fingerprint", "videos",
                         "sources", "events_applied", "parked_events", "label_frames",
                         "provenance_frames", "splits"}
    assert show["videos"] == 3 and show["events_applied"] == 2
    assert show["sources"] == {"hospital-a": 2, "hospital-b": 1}
    assert show["label_frames"] == {"Preparation": 700, "ClippingCutting": 300}
    assert show["provenance_frames"] == {"human": 200, "model": 800}
    assert sum(show["splits"].values()) == 3 and set(show["splits"]) == set(SPLITS)
    assert store.manifest(DS).offsets == {"surgflow.inference:0": 2}


def test_replayed_events_are_duplicates_and_write_nothing(store):
    e = model_event("m1", "case-0001", [(0, 10, "Preparation", 0.5)])
    store.commit(DS, videos=[rec(1)], events=[e], offsets={"t:0": 1})
    files_before = sorted((store.root / DS).rglob("*"))
    r = store.commit(DS, videos=[rec(1)], events=[e, e], offsets={"t:0": 1})
    assert (r.version, r.applied, r.duplicates) == (None, 0, 2)
    assert sorted((store.root / DS).rglob("*")) == files_before
    assert store.latest_version(DS) == 1


def test_offsets_merge_by_maximum_per_partition(store):
    store.commit(DS, videos=[rec(1)], events=[], offsets={"t:0": 5, "t:1": 3})
    store.commit(DS, videos=[rec(2)], events=[], offsets={"t:0": 4, "t:2": 9})
    assert store.manifest(DS).offsets == {"t:0": 5, "t:1": 3, "t:2": 9}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_history_of_commits_equals_resolving_everything_at_once(tmp_path, seed):
    rnd = random.Random(seed)
    vids = [rec(i, frames=rnd.randint(50, 400)) for i in range(8)]
    evs = random_events(rnd, 60, vids)
    one = DatasetStore(tmp_path / "one")
    one.commit(DS, videos=vids, events=evs, offsets={})
    many = DatasetStore(tmp_path / "many")
    shuffled = evs + rnd.sample(evs, 10)  # replays too
    rnd.shuffle(shuffled)
    many.commit(DS, videos=vids[:3], events=[], offsets={})
    first = (many.manifest(DS, 1), many.state(DS, 1), many.segments_table(DS, 1))
    i = 0
    while i < len(shuffled):
        step = rnd.randint(1, 8)
        batch = shuffled[i:i + step]
        have = {e.video_id for e in batch}
        many.commit(DS, videos=[v for v in vids if v.video_id in have], events=batch, offsets={})
        i += step
    many.commit(DS, videos=vids, events=[], offsets={})
    a, b = one.manifest(DS), many.manifest(DS)
    assert b.version > 5
    assert a.fingerprint == b.fingerprint
    assert {k: v for k, v in a.show().items() if k not in ("version", "parent", "created_at")} \
        == {k: v for k, v in b.show().items() if k not in ("version", "parent", "created_at")}
    expected = resolve({}, evs)
    state = many.state(DS)
    assert state.intervals == {k: v for k, v in expected.items() if v}
    assert state.event_ids == {e.event_id for e in evs}
    assert one.segments_table(DS).drop_columns(["version"]).equals(
        many.segments_table(DS).drop_columns(["version"]))
    rows = many.segments_table(DS).to_pylist()
    want = [(vid, s.start_frame, s.end_frame, s.label, s.provenance, s.confidence)
            for vid in sorted(expected) for s in coalesce(expected[vid])]
    assert [(r["video_id"], r["start_frame"], r["end_frame"], r["label"], r["provenance"],
             r["confidence"]) for r in rows] == want
    for m in many.versions(DS):  # merging runs never touched a published version's files
        assert many.verify(DS, m.version) == []
    assert (many.manifest(DS, 1), many.state(DS, 1), many.segments_table(DS, 1)) == first
    found = many.find_videos(DS, ["case-0001", "case-0404"], version=1)
    assert list(found) == ["case-0001"] and found["case-0001"].split == split_of("case-0001")


def test_fingerprint_differs_when_one_label_differs(tmp_path):
    a, b = DatasetStore(tmp_path / "a"), DatasetStore(tmp_path / "b")
    a.commit(DS, videos=[rec(1)], events=[human_event("h", "case-0001", [(0, 9, "Preparation")])],
             offsets={})
    b.commit(DS, videos=[rec(1)], events=[human_event("h", "case-0001", [(0, 9,
                                                                           "ClippingCutting")])],
             offsets={})
    assert a.manifest(DS).fingerprint != b.manifest(DS).fingerprint


def test_small_commit_writes_only_the_change_and_runs_stay_few(store):
    vids = [rec(i, frames=2000) for i in range(300)]
    rnd = random.Random(0)
    store.commit(DS, videos=vids, events=random_events(rnd, 900, vids), offsets={})
    base = {f.path for f in store.manifest(DS).files}
    base_rows = sum(f.rows for f in store.manifest(DS).files)
    for n in range(40):
        before = {f.path for f in store.manifest(DS).files}
        v = vids[n]
        store.commit(DS, videos=[], offsets={}, events=[
            human_event(f"fix{n}", v.video_id, [(0, 100, "ClippingCutting")], minutes=9)])
        m = store.manifest(DS)
        assert base <= {f.path for f in m.files}  # the big first run is never rewritten
        new_rows = sum(f.rows for f in m.files if f.path not in before)
        # a merge of trailing runs (like a binary counter's carry) rewrites at most the
        # commits since the last one: at commit 32 that is 32 small runs, still < 1/5
        assert new_rows < base_rows / 5, f"commit {n} rewrote {new_rows} of {base_rows} rows"
    assert m.run_count() <= 8
    assert m.events_applied == 940
    assert store.state(DS).intervals["case-0005"][0].label == "ClippingCutting"


def test_two_processes_racing_for_the_same_version(store):
    store.commit(DS, videos=[rec(1), rec(2)], events=[], offsets={})
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(store.home), vid, eid, barrier, results))
             for vid, eid in (("case-0001", "a"), ("case-0002", "b"))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got = sorted([results.get(timeout=5), results.get(timeout=5)])
    assert [g[0] for g in got] == [2, 3]  # exactly one won version 2, the other rebased
    assert sorted(g[1] for g in got) == [0, 1]  # retries
    assert store.manifest(DS, 3).parent == 2
    assert store.state(DS, 3).event_ids == {"a", "b"}
    assert len(store.state(DS, 2).event_ids) == 1
    assert store.manifest(DS).events_applied == 2


def _racer(home, video_id, event_id, barrier, results):
    from surgflow.data import versions

    real, first = versions.write_exclusive, [True]

    def gated(path, data):
        if path.parent.name == "versions" and first[0]:
            first[0] = False
            barrier.wait(30)  # both writers built version 2 on version 1: now both publish
        return real(path, data)

    versions.write_exclusive = gated
    r = versions.DatasetStore(Path(home)).commit(
        DS, videos=[], offsets={},
        events=[human_event(event_id, video_id, [(0, 50, "Preparation")])])
    results.put((r.version, r.retries))


def test_many_writers_without_coordination_lose_nothing(store):
    store.commit(DS, videos=[rec(i) for i in range(4)], events=[], offsets={})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store.home), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    versions = store.versions(DS)
    assert [m.version for m in versions] == list(range(1, 22))
    assert all(m.parent == m.version - 1 for m in versions[1:])
    assert [m.events_applied for m in versions] == list(range(21))
    state = store.state(DS)
    assert state.event_ids == {f"w{w}-{k}" for w in range(4) for k in range(5)}
    assert state.offsets == {f"t:{w}": 5 for w in range(4)}
    one = DatasetStore(store.home.parent / "one")
    one.commit(DS, videos=[rec(i) for i in range(4)], offsets={},
               events=[_writer_event(w, k) for w in range(4) for k in range(5)])
    assert one.manifest(DS).fingerprint == store.manifest(DS).fingerprint


def _writer_event(w: int, k: int) -> LabelEvent:
    return model_event(f"w{w}-{k}", f"case-{w:04d}", [(k * 10, k * 10 + 15, PHASES[k % 3], 0.5)],
                       minutes=k, partition=w, offset=k)


def _writer(home, w):
    s = DatasetStore(Path(home))
    for k in range(5):
        s.commit(DS, videos=[], events=[_writer_event(w, k)], offsets={f"t:{w}": k + 1})


def test_gc_spares_an_old_orphan_that_a_new_commit_reuses(store, monkeypatch):
    e = human_event("h", "case-0001", [(0, 10, "Preparation")])
    store.commit(DS, videos=[rec(1)], events=[e], offsets={})
    # Simulate a lost race: the same content written long ago and never referenced.
    other = DatasetStore(store.home.parent / "other")
    other.commit(DS, videos=[rec(1)], events=[e, human_event("g", "case-0001",
                                                             [(5, 20, "ClippingCutting")])],
                 offsets={})
    data = store.root / DS / "data"
    stale = []
    for f in other.manifest(DS).files:
        target = data / Path(f.path).name
        if not target.exists():
            target.write_bytes((other.root / DS / f.path).read_bytes())
            os.utime(target, (1, 1))
            stale.append(target)
    assert stale
    from surgflow.data import versions

    def gc_then_publish(path, data):  # gc runs after the data files, before the manifest
        store.gc(grace_s=60)
        return write_exclusive(path, data)

    monkeypatch.setattr(versions, "write_exclusive", gc_then_publish)
    store.commit(DS, videos=[], offsets={},
                 events=[human_event("g", "case-0001", [(5, 20, "ClippingCutting")])])
    assert store.verify(DS) == []


def _crasher(home):
    from surgflow import storage
    from surgflow.data import versions

    def crash(path, data):
        if path.parent.name == "versions":
            storage._write_temp(path.parent, data)  # half-way through publishing the manifest
            os.kill(os.getpid(), signal.SIGKILL)
        return storage.write_exclusive(path, data)

    versions.write_exclusive = crash
    versions.DatasetStore(Path(home)).commit(
        DS, videos=[rec(7)], offsets={"t:0": 99},
        events=[human_event("late", "case-0001", [(0, 50, "ClippingCutting")])])


def test_crash_mid_publish_leaves_the_old_version_and_gc_removes_orphans(store):
    store.commit(DS, videos=[rec(1)], offsets={"t:0": 1},
                 events=[human_event("first", "case-0001", [(0, 10, "Preparation")])])
    v1 = store.manifest(DS)
    proc = mp.get_context("spawn").Process(target=_crasher, args=(str(store.home),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert store.latest_version(DS) == 1 and store.manifest(DS) == v1
    data_dir = store.root / DS / "data"
    referenced = {f.path.split("/")[-1] for f in v1.files}
    orphans = [p for p in data_dir.iterdir() if p.name not in referenced]
    temps = list((store.root / DS / "versions").glob(".tmp-*"))
    assert orphans and temps
    assert store.gc()["removed_files"] == 0  # young orphans may belong to a commit in flight
    report = store.gc(grace_s=0)
    assert report["removed_files"] == len(orphans) + len(temps)
    assert {p.name for p in data_dir.iterdir()} == referenced
    assert store.verify(DS) == []
    r = store.commit(DS, videos=[rec(7)], offsets={"t:0": 99},
                     events=[human_event("late", "case-0001", [(0, 50, "ClippingCutting")])])
    assert r.version == 2 and store.manifest(DS).events_applied == 2


def test_a_video_never_changes_split_across_versions(store):
    vids = [rec(i) for i in range(200)]
    for k in range(0, 200, 50):
        store.commit(DS, videos=vids[: k + 50], events=[], offsets={})
    splits = {}
    for m in store.versions(DS):
        for row in store.videos_table(DS, m.version).to_pylist():
            assert splits.setdefault(row["video_id"], row["split"]) == row["split"]
            assert row["split"] == split_of(row["video_id"])
    counts = store.manifest(DS).splits
    assert sum(counts.values()) == 200 and counts["train"] > counts["val"] > 0
    assert counts["test"] > 0


def test_bad_commits_and_lookups_say_what_is_wrong(store):
    with pytest.raises(NotFound, match="no version yet"):
        store.manifest(DS)
    with pytest.raises(UnknownName, match="procedure"):
        store.commit("appendectomy", videos=[], events=[], offsets={})
    store.commit(DS, videos=[rec(1, frames=100)], events=[], offsets={})
    with pytest.raises(NotFound, match=r"no version 5; versions are 1\.\.1"):
        store.manifest(DS, 5)
    with pytest.raises(BadInput, match="neither in dataset"):
        store.commit(DS, videos=[], offsets={},
                     events=[human_event("x", "case-0042", [(0, 1, "Preparation")])])
    with pytest.raises(BadInput, match="outside the video's 100 frames"):
        store.commit(DS, videos=[], offsets={},
                     events=[human_event("x", "case-0001", [(0, 101, "Preparation")])])
    with pytest.raises(BadInput, match="unknown label"):
        store.commit(DS, videos=[], offsets={},
                     events=[human_event("x", "case-0001", [(0, 1, "Lunch")])])
    other = rec(9).model_copy(update={"procedure": "appendectomy"})
    with pytest.raises(BadInput, match="cannot join"):
        store.commit(DS, videos=[other], events=[], offsets={})
    assert store.latest_version(DS) == 1
    assert parse_ref("cholecystectomy@3") == (DS, 3) and parse_ref(DS) == (DS, None)
    with pytest.raises(BadInput, match="DATASET@VERSION"):
        parse_ref("cholecystectomy@latest")


def test_ids_filling_splits_picks_ids_by_their_stable_split() -> None:
    from surgflow.data.splits import ids_filling_splits

    picked = ids_filling_splits({"train": 3, "val": 2, "test": 1}, "v-{:03d}".format)
    splits = [split_of(v) for _, v in picked]
    assert sorted(splits) == ["test", "train", "train", "train", "val", "val"]
    assert all(v == f"v-{i:03d}" for i, v in picked)
    assert [i for i, _ in picked] == sorted(i for i, _ in picked)
    with pytest.raises(ValueError, match="splits"):
        ids_filling_splits({"holdout": 1}, str)


def test_versions_written_before_runs_stored_segments_still_read_and_merge(store):
    """A store written before runs held their segments: each run's segments are derived once
    from its intervals, shared by the versions that hold it, and kept by gc."""
    store.commit(DS, videos=[rec(1), rec(2)], offsets={}, events=[
        model_event("m1", "case-0001", [(0, 500, "Preparation", 0.9),
                                        (500, 1000, "Preparation", 0.9)])])
    store.commit(DS, videos=[rec(3)], offsets={}, events=[
        human_event("h1", "case-0003", [(0, 100, "ClippingCutting")])])
    want = store.segments_table(DS).to_pylist()
    newer = {f"{DS}/{f.path}" for m in store.versions(DS) for f in m.files
             if f.kind in ("segments", "replaced")}
    for m in store.versions(DS):  # rewrite the manifests as the older format had them
        old = m.model_copy(update={"files": [f for f in m.files
                                              if f.kind not in ("segments", "replaced")]})
        store._manifest_path(DS, m.version).write_text(old.model_dump_json())
    assert store.segments_table(DS).to_pylist() == want
    cache = sorted(p.name for p in (store.root / DS / "cache").iterdir())
    assert cache and all(n.startswith("run-segments-") for n in cache)
    store.commit(DS, videos=[], offsets={}, events=[  # merges an old run into a new one
        human_event("h2", "case-0001", [(0, 10, "ClippingCutting")])])
    rows = store.segments_table(DS).to_pylist()
    assert [(r["video_id"], r["start_frame"], r["end_frame"]) for r in rows] == [
        ("case-0001", 0, 10), ("case-0001", 10, 1000), ("case-0003", 0, 100)]
    removed = store.gc(grace_s=0)["removed"]  # the segment files the rewrite orphaned
    assert set(removed) == newer
    assert sorted(p.name for p in (store.root / DS / "cache").iterdir()) == cache  # in use
    assert store.segments_table(DS, 2).to_pylist() == want


@pytest.mark.parametrize("text", [f"{DS}@0", f"{DS}@01", "Cholecystectomy@1", f"{DS}@latest",
                                  f"{DS}@", "@1", f"{DS}@1@2", "chole cystectomy"])
def test_one_grammar_for_dataset_refs_in_commands_and_recipes(text):
    """``data show`` and a recipe's data sources refuse the same texts, with the same reason."""
    from pydantic import ValidationError

    from surgflow.data.views import ViewSpec

    with pytest.raises(BadInput) as refused:
        parse_ref(text)
    with pytest.raises(ValidationError) as invalid:
        ViewSpec(sources=[text])
    assert str(refused.value) in str(invalid.value)
