"""Consumers of one group commit side by side: a commit that lost the race to a version of other
videos is carried onto that version instead of being rebuilt; one that overlaps it is rebuilt.
Either way the dataset is the one a single writer makes of the same events."""

from __future__ import annotations

import logging
import threading

import pytest

from surgflow.data import versions
from surgflow.data.versions import DatasetStore
from tests.cli_helpers import run_cli
from tests.feedback_helpers import (
    label_stream,
    once_reference,
    produce,
    start_follow,
    stop_follow,
    wait_consumed,
)
from tests.test_versions import DS, human_event, model_event, rec

REBUILT, CARRIED = "rebuilding on it", "carried onto version"


def _events(prefix: str, video: int, n: int, minutes: int = 0) -> list:
    return [model_event(f"{prefix}{k}", f"case-{video:04d}",
                        [(k * 7, k * 7 + 30, ("Preparation", "ClippingCutting")[k % 2], 0.8)],
                        minutes=minutes + k, partition=video, offset=k) for k in range(n)]


HISTORY = [  # (videos, events) committed one after the other before the race
    ([rec(i) for i in range(4)], _events("h", 0, 20) + _events("g", 1, 20)),
    ([], _events("s", 1, 3, minutes=50)),  # a small last run: the next commits merge it
]


def _store(path) -> DatasetStore:
    store = DatasetStore(path)
    for vids, events in HISTORY:
        store.commit(DS, videos=vids, events=events, offsets={})
    return store


def _race(store: DatasetStore, commits: list[list], monkeypatch) -> list:
    """Commit each event list in its own thread, every one built on the same parent; the first
    attempts to publish go in list order, so writer 0 wins and the others lose once."""
    real = versions.write_exclusive
    built = threading.Barrier(len(commits))
    turn = [threading.Event() for _ in commits]
    mine = threading.local()

    def gated(path, data):
        if path.parent.name != "versions" or getattr(mine, "tried", False):
            return real(path, data)
        mine.tried = True
        built.wait(30)  # everyone has built on the same parent
        if mine.index:
            assert turn[mine.index - 1].wait(30)
        try:
            return real(path, data)
        finally:
            turn[mine.index].set()

    monkeypatch.setattr(versions, "write_exclusive", gated)
    results: list = [None] * len(commits)

    def commit(i: int, events: list) -> None:
        mine.index = i
        results[i] = DatasetStore(store.home).commit(DS, videos=[], events=events,
                                                     offsets={f"t:{i}": i + 1})

    threads = [threading.Thread(target=commit, args=(i, ev)) for i, ev in enumerate(commits)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.setattr(versions, "write_exclusive", real)
    return results


def _same_content(got: DatasetStore, commits: list[list], tmp_path) -> None:
    """``got`` holds what one writer makes of the history and every racing event at once."""
    one = _store(tmp_path / "one")
    one.commit(DS, videos=[], events=[e for events in commits for e in events],
               offsets={f"t:{i}": i + 1 for i in range(len(commits))})
    volatile = {"version", "parent", "created_at"}
    a, b = got.manifest(DS).show(), one.manifest(DS).show()
    assert {k: v for k, v in a.items() if k not in volatile} == {
        k: v for k, v in b.items() if k not in volatile}
    sa, sb = got.state(DS), one.state(DS)
    assert (sa.videos, sa.intervals, sa.event_ids, sa.offsets) == (
        sb.videos, sb.intervals, sb.event_ids, sb.offsets)
    assert got.segments_table(DS).drop_columns(["version"]).equals(
        one.segments_table(DS).drop_columns(["version"]))


def test_a_commit_of_other_videos_is_carried_onto_the_winner(tmp_path, monkeypatch, caplog):
    store = _store(tmp_path / "home")
    # the winner changes video 1, whose rows sit in the small last run that the loser's build
    # merged into its own run: carrying that run whole would bring back video 1's old rows
    commits = [_events("a", 1, 2, minutes=90), _events("b", 2, 12), _events("c", 3, 5)]
    with caplog.at_level(logging.DEBUG, logger="surgflow.data.versions"):
        results = _race(store, commits, monkeypatch)
    assert sorted(r.version for r in results) == [3, 4, 5]
    assert [r.applied for r in results] == [2, 12, 5]
    assert results[0].retries == 0 and all(r.retries >= 1 for r in results[1:])
    assert REBUILT not in caplog.text
    assert caplog.text.count(CARRIED) == sum(r.retries for r in results)
    _same_content(store, commits, tmp_path)


def test_a_commit_is_carried_over_a_merged_run_that_holds_its_videos_old_rows(
        tmp_path, monkeypatch, caplog):
    store = _store(tmp_path / "home")
    # the winner's run absorbs the small last run, which holds video 1: the winner's new file
    # then holds video 1's unchanged rows, and the loser (video 1) is still carried
    commits = [_events("b", 2, 40), _events("a", 1, 2, minutes=90)]
    with caplog.at_level(logging.DEBUG, logger="surgflow.data.versions"):
        results = _race(store, commits, monkeypatch)
    assert [(r.version, r.retries, r.carried, r.rebuilt) for r in results] == [
        (3, 0, 0, 0), (4, 1, 1, 0)]
    winner = store.manifest(DS, 3)
    merged = winner.runs()[-1]
    assert merged not in store.manifest(DS, 2).runs()
    assert "case-0001" in versions.df.read_data_file(
        store.dataset_dir(DS), merged["videos"]).column("video_id").to_pylist()
    _same_content(store, commits, tmp_path)


def test_a_commit_that_overlaps_the_winner_is_rebuilt(tmp_path, monkeypatch, caplog):
    store = _store(tmp_path / "home")
    commits = [_events("a", 2, 4, minutes=90), _events("b", 2, 6, minutes=3)]  # both video 2
    with caplog.at_level(logging.INFO, logger="surgflow.data.versions"):
        results = _race(store, commits, monkeypatch)
    assert [(r.version, r.retries) for r in results] == [(3, 0), (4, 1)]
    assert REBUILT in caplog.text
    _same_content(store, commits, tmp_path)


@pytest.mark.parametrize("video,outvoted", [(1, False), (3, False), (1, True)])
def test_an_event_the_winner_applied_is_a_duplicate_not_applied_twice(
        tmp_path, monkeypatch, caplog, video, outvoted):
    store = _store(tmp_path / "home")
    # during a rebalance two consumers can hold one partition: the same event in both batches.
    # Outvoted: an old model label under newer ones changes no row; only its id tells.
    shared = (model_event("shared", f"case-{video:04d}", [(7, 30, "ClippingCutting", 0.8)],
                          minutes=-999) if outvoted else
              human_event("shared", f"case-{video:04d}", [(5, 60, "ClippingCutting")],
                          minutes=99))
    commits = [[shared], [shared, *_events("b", 2, 3)]]
    with caplog.at_level(logging.INFO, logger="surgflow.data.versions"):
        results = _race(store, commits, monkeypatch)
    assert [(r.version, r.applied, r.duplicates) for r in results] == [(3, 1, 0), (4, 3, 1)]
    assert REBUILT in caplog.text
    assert store.manifest(DS).events_applied == 43 + 4
    _same_content(store, commits, tmp_path)


@pytest.mark.integration
@pytest.mark.slow
def test_three_consumers_on_six_partitions_lose_and_double_nothing(
        kafka, embedded_broker, synthetic_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SURGFLOW_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("SURGFLOW_KAFKA_SESSION_TIMEOUT_MS", "3000")  # quick group joins
    stream = label_stream(synthetic_corpus, 600, seed=13)
    procs = [start_follow(tmp_path / f"c{i}.log") for i in range(3)]
    produce(stream, 0.01)
    wait_consumed(kafka.home, embedded_broker.cluster_id, kafka.prefix, len(stream))
    reports = [stop_follow(p) for p in procs]
    assert sum(r["applied"] for r in reports) == len(stream)
    assert sum(1 for r in reports if r["consumed"]) >= 2, reports
    got = run_cli("data", "show", DS, json=True).data
    want = once_reference(stream, tmp_path, "ref")
    assert got["fingerprint"] == want["fingerprint"]
    assert got["events_applied"] == want["events_applied"] == len(stream) - len(synthetic_corpus)
