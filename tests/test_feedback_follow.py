"""Follow mode: kill -9 at random moments, two consumers in one group; same final dataset."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from surgflow.config import get_settings
from surgflow.feedback.checkpoint import Checkpoint
from surgflow.feedback.client import Publisher
from surgflow.feedback.schemas import INPUT_TOPICS
from tests.feedback_helpers import (
    SURGFLOW,
    annotation_event,
    cli,
    expected_show,
    inference_event,
    video_event,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _quick_group_joins(monkeypatch):
    # The embedded broker's group join waits about half the session timeout, and a killed
    # member is dropped after a full one; a short timeout keeps restarts quick.
    monkeypatch.setenv("SURGFLOW_KAFKA_SESSION_TIMEOUT_MS", "3000")
LABELS = ("Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection")


def _stream(corpus, n_labels: int, seed: int) -> list[tuple[str, dict]]:
    """Videos first, then a shuffled mix of model and human labels with distinct times."""
    rng = random.Random(seed)
    out = [("video", video_event(v)) for v in corpus]
    minutes = rng.sample(range(10 * n_labels), n_labels)
    for i in range(n_labels):
        v = rng.choice(corpus)
        a = rng.randrange(0, v.num_frames - 2)
        b = rng.randrange(a + 1, min(v.num_frames, a + 120) + 1)
        seg = {"start_frame": a, "end_frame": b, "label": rng.choice(LABELS)}
        if rng.random() < 0.3:
            out.append(("annotation", annotation_event(v, f"a{i}", minutes[i], [seg])))
        else:
            out.append(("inference", inference_event(v, f"m{i}", minutes[i],
                                                     confidences=[round(rng.random(), 2)],
                                                     segments=[seg])))
    return out


def _produce(stream, pace_s: float = 0.0) -> None:
    with Publisher.from_settings(get_settings()) as pub:
        for i, (kind, event) in enumerate(stream):
            pub.publish(kind, event)
            if pace_s and i % 10 == 9:
                pub.flush()
                time.sleep(pace_s)
        pub.flush()


def _follow(log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [SURGFLOW, "feedback", "run", "--max-events", "20", "--max-seconds", "0.3", "--json",
         *extra], stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True)


def _consumed(home: Path, cluster_id: str, prefix: str) -> int:
    """Messages made durable so far: offsets are contiguous from 0, so the sum of positions."""
    topics = {prefix + t for t in INPUT_TOPICS}
    return sum(off for key, off in Checkpoint(home).positions(cluster_id).items()
               if key.rpartition(":")[0] in topics)


def _wait_consumed(home, cluster_id, prefix, total, timeout_s=90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _consumed(home, cluster_id, prefix) < total:
        assert time.monotonic() < deadline, (
            f"only {_consumed(home, cluster_id, prefix)} of {total} consumed")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"follow exited {proc.returncode}"
    return json.loads(out)


def _reference(stream, tmp_path: Path, name: str) -> dict:
    """`data show` of an uninterrupted --once run over the same events in a fresh home."""
    home = tmp_path / name
    home.mkdir()
    env = os.environ | {"SURGFLOW_HOME": str(home),
                        "SURGFLOW_TOPIC_PREFIX": os.environ["SURGFLOW_TOPIC_PREFIX"] + name + "."}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        _produce(stream)
    finally:
        os.environ.clear()
        os.environ.update(old)
    cli("feedback", "run", "--once", env=env)
    return cli("data", "show", "cholecystectomy", env=env)[1]


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
    stream = _stream(corpus, n_labels, seed)
    rng = random.Random(seed)
    log = tmp_path / "follow.log"
    pace = 6.0 * kills / max(1, len(stream) / 10)  # production spans the kill loop
    producer = threading.Thread(target=_produce, args=(stream, pace))
    producer.start()
    for k in range(kills):
        seen, joined = _versions_logged(log), _count(log, "assigned")
        proc = _follow(log)
        _wait_for(lambda n=joined: _count(log, "assigned") > n, 30)  # the group join
        if k % 2:
            _wait_for(lambda n=seen: _versions_logged(log) > n, 10, poll_s=0.002)
        else:
            time.sleep(rng.uniform(0.1, 2.0))
        proc.kill()  # SIGKILL: no cleanup, no final batch
        proc.wait()
    producer.join()
    joined = _count(log, "assigned")
    proc = _follow(log)
    assert _wait_for(lambda: _count(log, "assigned") > joined, 30), "the last consumer joined"
    _wait_consumed(kafka.home, embedded_broker.cluster_id, kafka.prefix, len(stream))
    _stop(proc)
    got = cli("data", "show", "cholecystectomy")[1]
    want = _reference(stream, tmp_path, "ref")
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
    stream = _stream(synthetic_corpus, 300, seed=5)
    a = _follow(tmp_path / "a.log")
    b = _follow(tmp_path / "b.log")
    _produce(stream, 0.02)
    _wait_consumed(kafka.home, embedded_broker.cluster_id, kafka.prefix, len(stream))
    ra, rb = _stop(a), _stop(b)
    assert ra["consumed"] > 0 and rb["consumed"] > 0, (ra, rb)
    assert ra["applied"] + rb["applied"] == len(stream)
    got = cli("data", "show", "cholecystectomy")[1]
    want = _reference(stream, tmp_path, "ref")
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

    # N first: 25 waiting messages, batches of 10, the last 5 wait for T (60 s) or the stop
    thread = threading.Thread(target=follow, args=(10, 60.0))
    thread.start()
    deadline = time.monotonic() + 30
    while sum(batches) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert batches == [10, 10]
    stop.set()
    thread.join(30)
    assert batches == [10, 10, 5]  # stopping merges the batch in hand

    # T first: one message, N far away: merged after about T seconds
    batches.clear()
    stop.clear()
    thread = threading.Thread(target=follow, args=(1000, 0.5))
    thread.start()
    time.sleep(0.5)
    with Publisher.from_settings(get_settings()) as pub:
        pub.annotation(annotation_event(v, "t-first", 99, v.segments[:1]))
        pub.flush()
    t0 = time.monotonic()
    while not batches and time.monotonic() - t0 < 20:
        time.sleep(0.02)
    before_stop = list(batches)
    stop.set()
    thread.join(30)
    assert before_stop == [1]
    assert cli("data", "show", "cholecystectomy")[1]["events_applied"] == 25
