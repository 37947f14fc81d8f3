"""A consumer group splits the backlog by records, not by partition count, and follow mode
says where its time went."""

from __future__ import annotations

import re

from kafka import KafkaConsumer, TopicPartition

from surgflow.config import get_settings
from surgflow.feedback.assignment import deal
from surgflow.feedback.phases import COUNTS, PHASES
from surgflow.feedback.schemas import INPUT_TOPICS
from tests.cli_helpers import run_cli
from tests.feedback_helpers import (
    inference_event,
    once_reference,
    produce,
    start_follow,
    stop_follow,
    video_event,
    wait_consumed,
)

_ASSIGNED = re.compile(r"assigned (\d+) partitions")


def test_units_go_heaviest_first_to_the_least_loaded_member():
    # the backlog of the 240k-event benchmark, in thousands of records per partition number
    got = deal({0: 30, 1: 40, 2: 40, 3: 20, 4: 20, 5: 90}, ["a", "b", "c"])
    assert got == {"a": [5], "b": [0, 1], "c": [2, 3, 4]}  # 90, 70, 80 (range: 70, 80, 110)
    assert deal(dict.fromkeys(range(6), 0), ["a", "b", "c"]) == {
        "a": [0, 3], "b": [1, 4], "c": [2, 5]}  # no backlog: round robin
    assert deal({0: 5}, ["a", "b"]) == {"a": [0], "b": []}


def test_a_group_splits_the_backlog_by_records(
        kafka, embedded_broker, synthetic_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SURGFLOW_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("SURGFLOW_KAFKA_SESSION_TIMEOUT_MS", "3000")  # quick group joins
    heavy, *rest = synthetic_corpus
    stream = [("video", video_event(v)) for v in synthetic_corpus]
    stream += [("inference", inference_event(heavy, f"h{i}", i)) for i in range(150)]
    stream += [("inference", inference_event(v, f"l-{v.video_id}-{i}", i))
               for v in rest for i in range(4)]
    produce(stream)
    settings = get_settings()
    probe = KafkaConsumer(bootstrap_servers=kafka.bootstrap)
    tps = [TopicPartition(settings.topic(t), p) for t in INPUT_TOPICS
           for p in range(settings.topic_partitions)]
    units: dict[int, int] = {}
    for tp, end in probe.end_offsets(tps).items():
        units[tp.partition] = units.get(tp.partition, 0) + end
    probe.close()
    expected = sorted(len(u) * len(INPUT_TOPICS) for u in deal(units, ["a", "b"]).values())
    assert expected[0] == len(INPUT_TOPICS)  # the heavy video's partition number alone...
    assert expected != [9, 9]  # ...where the range assignor gives each member three

    procs = [start_follow(tmp_path / f"{name}.log") for name in ("a", "b")]
    wait_consumed(kafka.home, embedded_broker.cluster_id, kafka.prefix, len(stream))
    reports = [stop_follow(p) for p in procs]

    assert sum(r["applied"] for r in reports) == len(stream)
    for r in reports:  # follow mode ends with where its time went
        assert set(r["time_s"]) == set(PHASES) and set(COUNTS) <= set(r)
        assert r["time_s"]["join"] > 0 and r["batches"] >= (1 if r["consumed"] else 0)
    if not any(r["rebalances"] for r in reports):  # both joined the first generation
        first = sorted(int(_ASSIGNED.search((tmp_path / f"{name}.log").read_text())[1])
                       for name in ("a", "b"))
        assert first == expected
        assert max(r["consumed"] for r in reports) >= 151  # the heavy video's, by one member
    got = run_cli("data", "show", "cholecystectomy", json=True).data
    want = once_reference(stream, tmp_path, "ref")
    assert got["fingerprint"] == want["fingerprint"]
