"""Bad messages land in the DLQ with a readable reason; everything else is applied."""

from __future__ import annotations

import json
import shutil

import pytest

from surgflow.config import get_settings
from surgflow.data.registry import VideoRegistry
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.feedback import dlq
from surgflow.feedback.client import Publisher
from tests.cli_helpers import run_cli
from tests.feedback_helpers import annotation_event, inference_event, video_event

pytestmark = pytest.mark.integration


def test_each_poison_message_is_dead_lettered_with_its_reason(kafka, synthetic_corpus, tmp_path):
    good, other = synthetic_corpus[0], synthetic_corpus[1]
    ProcedureCatalog(kafka.home).add("appendectomy", ["Access", "Resection", "Closure"])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    renamed = tmp_path / "renamed.mp4"  # same video_id as `good`, different bytes
    shutil.copy(other.path, renamed)
    outside = "/etc/hostname"

    poison: dict[str, tuple[str, bytes, str]] = {  # name -> (topic, bytes, reason must contain)
        "not-json": ("inference", b"{not json", "not JSON"),
        "not-utf8": ("annotations", b"\xff\xfe\x00", "not UTF-8"),
        "wrong-schema": ("inference", json.dumps(
            {"schema": "surgflow.inference/v1", "event_id": "x1", "video_id": good.video_id}
        ).encode(), "produced_at"),
        "unknown-label": ("annotations", json.dumps(annotation_event(
            good, "bad-label", 5, [{"start_frame": 0, "end_frame": 10, "label": "Dancing"}])
        ).encode(), "unknown label 'Dancing'"),
        "past-end": ("inference", json.dumps(inference_event(
            good, "past-end", 5, confidences=[0.9],
            segments=[{"start_frame": 0, "end_frame": good.num_frames + 1,
                       "label": "Preparation"}])).encode(), "outside the video"),
        "other-procedure": ("inference", json.dumps(inference_event(
            good, "other-proc", 5, confidences=[0.9],
            segments=[{"start_frame": 0, "end_frame": 5, "label": "Preparation"}])
            | {"procedure": "appendectomy"}).encode(), "is a 'cholecystectomy' video"),
        "unknown-procedure": ("inference", json.dumps(inference_event(
            good, "unk-proc", 5) | {"procedure": "nephrectomy"}).encode(),
            "unknown procedure 'nephrectomy'"),
        "undecodable": ("videos", json.dumps(video_event(
            good, "vid-broken", video_id="broken", uri=str(broken))).encode(), "cannot be"),
        "outside-roots": ("videos", json.dumps(video_event(
            good, "vid-outside", video_id="outside", uri=outside)).encode(),
            "outside SURGFLOW_VIDEO_ROOTS"),
        "conflicting-content": ("videos", json.dumps(video_event(
            good, "vid-conflict", uri=str(renamed))).encode(), "sha256"),
    }
    valid = [("videos", video_event(good)),
             ("inference", inference_event(good, "inf-ok", 1)),
             ("annotations", annotation_event(good, "ann-ok", 2, good.segments[:1]))]

    with Publisher.from_settings(get_settings()) as pub:
        for topic, event in valid[:1]:
            pub.send_raw(topic, json.dumps(event).encode(), key=good.video_id)
        for topic, value, _ in poison.values():
            pub.send_raw(topic, value, key=good.video_id)
        for topic, event in valid[1:]:
            pub.send_raw(topic, json.dumps(event).encode(), key=good.video_id)
        pub.flush()

    report = run_cli("feedback", "run", "--once", json=True).data
    assert report["dead_lettered"] == len(poison)
    assert report["applied"] == len(valid)
    assert report["versions_created"] == [{"dataset": "cholecystectomy", "version": 1}]
    show = run_cli("data", "show", "cholecystectomy", json=True).data
    assert show["videos"] == 1 and show["events_applied"] == 2

    letters = dlq.read_all(kafka.bootstrap, kafka.topic("dlq"))
    assert len(letters) == len(poison)
    by_value = {d.value: d for d in letters}
    for name, (topic, value, reason) in poison.items():
        d = by_value[value]
        assert reason in d.reason, f"{name}: {d.reason!r}"
        assert d.topic == kafka.topic(topic)
        assert _message_at(kafka.bootstrap, d.topic, d.partition, d.offset) == value, name
    # the conflict names both hashes
    conflict = by_value[poison["conflicting-content"][1]].reason
    registry = VideoRegistry(kafka.home, get_settings().resolved_video_roots())
    assert registry.get(good.video_id).sha256 in conflict
    # the undecodable video is quarantined with its reason; the unsafe one was never opened
    quarantined = registry.quarantined()
    assert [q.video_id for q in quarantined] == ["broken"]
    assert registry.find("outside") is None

    listed = run_cli("feedback", "dlq", json=True).data
    assert sorted(d["reason"] for d in listed) == sorted(d.reason for d in letters)

    again = run_cli("feedback", "run", "--once", json=True).data
    assert again["consumed"] == 0 and again["dead_lettered"] == 0


def _message_at(bootstrap: str, topic: str, partition: int, offset: int) -> bytes:
    """The value of the message at a position, read back from the source topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for _ in range(50):
            for record in consumer.poll(timeout_ms=200).get(tp, []):
                if record.offset == offset:
                    return record.value
        raise AssertionError(f"no message at {topic}:{partition}@{offset}")
    finally:
        consumer.close()
