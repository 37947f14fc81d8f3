"""Fleet mode: members of one consumer group analyse each video of the ``videos`` topic once,
publish its inference event, dead-letter what cannot be analysed, and survive analyses longer
than the max poll interval. Real broker, real registry, real ONNX chain, real videos."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from surgflow.data.synthetic import generate_video
from surgflow.feedback.client import Publisher
from surgflow.feedback.dlq import ERROR, SOURCE_OFFSET, SOURCE_TOPIC
from surgflow.feedback.schemas import decode
from surgflow.serving.events import EventSink
from surgflow.serving.fleet import Fleet
from surgflow.serving.pool import ModelPool, load_chain
from tests.feedback_helpers import video_event
from tests.serving_helpers import promote, read_topic, register_bundle, serving_settings

pytestmark = pytest.mark.integration


@dataclass
class FleetEnv:
    root: Path
    videos: Path
    bootstrap: str
    bundle_dir: Path


@pytest.fixture(scope="module")
def fleet_env(tmp_path_factory, tiny_chain_bundle, embedded_broker):
    root = tmp_path_factory.mktemp("fleet")
    return FleetEnv(root, root / "videos", embedded_broker.bootstrap,
                    tiny_chain_bundle.bundle_dir)


def _settings(env: FleetEnv, name: str):
    """A fresh home and topic prefix with the tiny chain in production."""
    settings = serving_settings(env.root / name, env.bootstrap, [env.videos])
    promote(settings, register_bundle(settings, env.bundle_dir))
    return settings


def _member(settings, loader=None):
    pool = ModelPool(settings, loader=loader)
    pool.refresh()
    return pool, EventSink(Publisher.from_settings(settings))


def _wait(what: str, cond, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _markers(settings, tag: str) -> set[str]:
    """One undecodable record at the end of each partition of the videos topic, keyed
    ``tag-<partition>``: each is dead-lettered at once, and a member that settled the marker
    of a partition has settled, and committed, everything before it there."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        keys = set()
        for p in range(settings.topic_partitions):
            key = f"{tag}-{p}"
            producer.send(settings.topic("videos"), value=b"marker", key=key.encode(),
                          partition=p).get(timeout=30)
            keys.add(key)
        return keys
    finally:
        producer.close()


def _late_member_settles_only(settings, tag: str) -> list:
    """A member that joins the group once the others left: the outcomes it saw until it had
    settled a fresh marker on every partition (where offsets were committed: the markers)."""
    late = Fleet(settings, *_member(settings))
    stop, seen = threading.Event(), []
    thread = threading.Thread(target=late.run, kwargs={
        "stop": stop, "on_result": lambda vid, outcome: seen.append((vid, outcome))})
    thread.start()
    try:
        _wait("the late member to hold partitions", lambda: bool(late.report.partitions))
        markers = _markers(settings, tag)
        _wait("the late member to settle its markers",
              lambda: markers <= {vid for vid, _ in seen})
    finally:
        stop.set()
        thread.join(60)
    assert late.report.analysed == []
    return seen


@pytest.mark.slow  # ~40 s: group joins and a rebalance on the embedded broker
def test_two_members_of_one_group_analyse_each_of_ten_videos_exactly_once(fleet_env):
    settings = _settings(fleet_env, "pair")
    videos = [generate_video(fleet_env.videos / f"fleet-{i:04d}.mp4", seed=300 + i,
                             duration_s=6, fps=10, width=64, height=64, gop=10)
              for i in range(10)]
    stop = threading.Event()
    outcomes: list = []
    lock = threading.Lock()

    def seen(video_id, outcome):
        with lock:
            outcomes.append((video_id, outcome))

    members = [Fleet(settings, *_member(settings)) for _ in range(2)]
    threads = [threading.Thread(target=m.run, kwargs={"stop": stop, "on_result": seen})
               for m in members]
    for t in threads:
        t.start()
    try:
        _wait("both members to hold partitions",
              lambda: all(m.report.partitions for m in members))
        with Publisher.from_settings(settings) as pub:
            for v in videos:
                pub.video(video_event(v, uri=v.path.as_uri()))
            pub.send_raw("videos", b"{not json", key="bad-1")
            pub.video(video_event(videos[0], event_id="outside", video_id="outside-1",
                                  uri="/etc/hostname"))
        _wait("12 outcomes", lambda: len(outcomes) >= 12)
        # once the group settled a marker behind them on every partition, every record was
        # settled and committed: an analysis done twice would have shown up by then
        markers = _markers(settings, "marker")
        _wait("the markers", lambda: markers <= {vid for vid, _ in outcomes})
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    analysed = [vid for m in members for vid in m.report.analysed]
    assert sorted(analysed) == sorted(v.video_id for v in videos)
    # both members took part: each settled the records of the partitions it held
    assert all(m.report.analysed or m.report.dead_lettered for m in members), [
        m.report for m in members]
    events = read_topic(settings.kafka_bootstrap, settings.topic("inference"), expect=10)
    assert Counter(decode("inference", r.value).video_id for r in events) == Counter(
        {v.video_id: 1 for v in videos})
    for r in events:
        assert r.key == decode("inference", r.value).video_id.encode()

    letters = read_topic(settings.kafka_bootstrap, settings.topic("dlq"), expect=5)
    reasons = {r.key: dict(r.headers) for r in letters}
    assert len(letters) == len(reasons)  # each dead-lettered once
    assert set(reasons) == {b"bad-1", b"outside-1"} | {m.encode() for m in markers}
    assert b"not JSON" in reasons[b"bad-1"][ERROR]
    assert b"SURGFLOW_VIDEO_ROOTS" in reasons[b"outside-1"][ERROR]
    assert all(h[SOURCE_TOPIC] == b"videos" and h[SOURCE_OFFSET].isdigit()
               for h in reasons.values())

    # offsets were committed once each outcome was acknowledged: a new member has nothing to do
    # but the markers put behind them
    late = {vid for vid, _ in _late_member_settles_only(settings, "late")}
    assert late == {f"late-{p}" for p in range(settings.topic_partitions)}


class SlowRunner:
    """A real runner whose analyses take ``delay_s`` longer (a long video, in effect)."""

    def __init__(self, runner, delay_s: float):
        self.runner, self.delay_s, self.spec = runner, delay_s, runner.spec

    def analyze(self, path, **kw):
        time.sleep(self.delay_s)
        return self.runner.analyze(path, **kw)


@pytest.mark.slow  # ~40 s: a 9 s analysis, then waiting for a rebalance that must not come
def test_an_analysis_longer_than_the_max_poll_interval_does_not_evict_the_member(fleet_env):
    settings = _settings(fleet_env, "slow")
    v = generate_video(fleet_env.videos / "slow-0001.mp4", seed=77, duration_s=6, fps=10,
                       width=64, height=64, gop=10)
    pool, sink = _member(settings, loader=lambda r, n, ver: SlowRunner(load_chain(r, n, ver),
                                                                      9.0))
    member = Fleet(settings, pool, sink, max_poll_interval_ms=3000)
    stop = threading.Event()
    done = threading.Event()
    thread = threading.Thread(target=member.run, kwargs={
        "stop": stop, "on_result": lambda vid, outcome: done.set()})
    thread.start()
    try:
        _wait("the member to hold partitions", lambda: bool(member.report.partitions))
        with Publisher.from_settings(settings) as pub:
            pub.video(video_event(v, uri=v.path.as_uri()))
        assert done.wait(60)
        # the member polls on after the analysis: had it been evicted during it, it would
        # rejoin (a revocation) and analyse the video again before it reached these markers
        markers = _markers(settings, "marker")
        _wait("the markers", lambda: set(member.report.dead_lettered) == markers)
        assert member.report.revocations == 0
        assert member.report.partitions == [0, 1, 2]
    finally:
        stop.set()
        thread.join(60)
    assert member.report.analysed == [v.video_id]
    events = read_topic(settings.kafka_bootstrap, settings.topic("inference"), expect=1)
    assert [decode("inference", r.value).video_id for r in events] == [v.video_id]
    late = {vid for vid, _ in _late_member_settles_only(settings, "late")}
    assert late == {f"late-{p}" for p in range(settings.topic_partitions)}
