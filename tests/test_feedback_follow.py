"""Follow mode: kill -9 at random moments, two consumers in one group; same final dataset."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from surgflow.config import get_settings
from surgflow.feedback.client import Publisher
from tests.cli_helpers import run_cli
from tests.feedback_helpers import (
    annotation_event,
    expected_show,
    inference_event,
    label_stream,
    once_reference,
    produce,
    start_follow,
    stop_follow,
    video_event,
    wait_consumed,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _quick_group_joins(monkeypatch):
    # The embedded broker's group join waits about half the session timeout, and a killed
    # member is dropped after a full one; a short timeout keeps restarts quick.
    monkeypatch.setenv("SURGFLOW_KAFKA_SESSION_TIMEOUT_MS", "3000")


def _count(log: Path, text: str) -> int:
    return log.read_text().count(text) if log.exists() else 0


def _versions_logged(log: Path) -> int:
    return _count(log, "dataset cholecystectomy: version")


def _wait_for(condition, timeout_s: float, poll_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def _crash_loop(kafka, embedded_broker, corpus, tmp_path, kills: int, n_labels: int, seed: int):
    """Kill -9 the follow consumer ``kills`` times while a producer runs, then finish.

    Every other kill lands right after a version is published and before the consumer moves
    its checkpoint (the narrowest window); the others at a random moment after the group join.
    """
    stream = label_stream(corpus, n_labels, seed)
    rng = random.Random(seed)
    log = tmp_path / "follow.log"
    pace = 6.0 * kills / max(1, len(stream) / 10)  # production spans the kill loop
    producer = threading.Thread(target=produce, args=(stream, pace))
    producer.start()
    for k in range(kills):
        seen, joined = _versions_logged(log), _count(log, "assigned")
        proc = start_follow(log)
        assert _wait_for(lambda n=joined: _count(log, "assigned") > n, 30), (
            f"consumer {k} never joined its group")
        if k % 2:
            assert _wait_for(lambda n=seen: _versions_logged(log) > n, 30, poll_s=0.002), (
                f"consumer {k} published no version to be killed after")
        else:
            time.sleep(rng.uniform(0.1, 2.0))
        proc.kill()  # SIGKILL: no cleanup, no final batch
        proc.wait()
    producer.join()
    joined = _count(log, "assigned")
    proc = start_follow(log)
    assert _wait_for(lambda: _count(log, "assigned") > joined, 30), "the last consumer joined"
    wait_consumed(kafka.home, embedded_broker.cluster_id, kafka.prefix, len(stream))
    stop_follow(proc)
    got = run_cli("data", "show", "cholecystectomy", json=True).data
    want = once_reference(stream, tmp_path, "ref")
    labels = [e for kind, e in stream if kind != "video"]
    oracle = expected_show(corpus, labels)
    assert {k: got[k] for k in oracle} == oracle
    assert got["fingerprint"] == want["fingerprint"]
    assert got["version"] >= 1


def test_kill_9_follow_consumer_three_times_same_fingerprint(
        kafka, embedded_broker, synthetic_corpus, tmp_path):
    _crash_loop(kafka, embedded_broker, synthetic_corpus, tmp_path, kills=3, n_labels=200,
                seed=11)


@pytest.mark.slow
def test_kill_9_follow_consumer_many_times_same_fingerprint(
        kafka, embedded_broker, synthetic_corpus, tmp_path):
    _crash_loop(kafka, embedded_broker, synthetic_corpus, tmp_path, kills=15, n_labels=1500,
                seed=23)


def test_two_consumers_in_one_group_share_the_work(
        kafka, embedded_broker, synthetic_corpus, tmp_path):
    stream = label_stream(synthetic_corpus, 300, seed=5)
    a = start_follow(tmp_path / "a.log")
    b = start_follow(tmp_path / "b.log")
    produce(stream, 0.02)
    wait_consumed(kafka.home, embedded_broker.cluster_id, kafka.prefix, len(stream))
    ra, rb = stop_follow(a), stop_follow(b)
    assert ra["consumed"] > 0 and rb["consumed"] > 0, (ra, rb)
    assert ra["applied"] + rb["applied"] == len(stream)
    got = run_cli("data", "show", "cholecystectomy", json=True).data
    want = once_reference(stream, tmp_path, "ref")
    assert got["fingerprint"] == want["fingerprint"]
    assert got["events_applied"] == want["events_applied"] == len(stream) - len(synthetic_corpus)


def test_follow_commits_every_n_events_or_t_seconds(kafka, synthetic_corpus):
    from surgflow.feedback.consumer import FeedbackConsumer

    v = synthetic_corpus[0]
    with Publisher.from_settings(get_settings()) as pub:
        pub.video(video_event(v))
        for i in range(24):
            seg = {"start_frame": i, "end_frame": i + 5, "label": "Preparation"}
            pub.inference(inference_event(v, f"n{i}", i, confidences=[0.9], segments=[seg]))
        pub.flush()

    batches: list[int] = []
    stop = threading.Event()

    def follow(max_events: int, max_seconds: float) -> None:
        with FeedbackConsumer(get_settings()) as consumer:
            consumer.follow(max_events=max_events, max_seconds=max_seconds, stop=stop,
                            on_batch=lambda r: batches.append(r.consumed))

    # N first: 25 waiting messages, batches of at most 10; the last ones are merged once there
    # is nothing more to read, without waiting for T (60 s). (A poll that comes back empty
    # while a fetch is still on its way merges early: on a loaded machine batches may be
    # smaller, never bigger.)
    thread = threading.Thread(target=follow, args=(10, 60.0))
    thread.start()
    deadline = time.monotonic() + 30
    while sum(batches) < 25 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(batches) == 25 and max(batches) <= 10 and len(batches) >= 3, batches
    stop.set()
    thread.join(30)
    assert sum(batches) == 25

    # T: records that keep coming, N far away: versions come while they still do
    batches.clear()
    stop.clear()
    thread = threading.Thread(target=follow, args=(1000, 0.5))
    thread.start()
    merged_while_sending = []
    with Publisher.from_settings(get_settings()) as pub:
        for i in range(100):
            pub.annotation(annotation_event(v, f"t-{i}", 99 + i, v.segments[:1]))
            pub.flush()
            merged_while_sending.append(sum(batches))
            time.sleep(0.05)
    deadline = time.monotonic() + 20
    while sum(batches) < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(30)
    assert sum(batches) == 100 and len(batches) > 1
    assert 0 < merged_while_sending[-1] < 100, merged_while_sending
    assert run_cli("data", "show", "cholecystectomy", json=True).data["events_applied"] == 124
