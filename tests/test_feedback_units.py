"""Pure parts of the feedback loop: wire schemas, times, parking and resume positions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from surgflow.feedback.checkpoint import Checkpoint
from surgflow.feedback.dlq import DeadLetter
from surgflow.feedback.merge import to_label_event
from surgflow.feedback.parking import ParkingLot, make
from surgflow.feedback.schemas import WireError, decode
from tests.precedence_oracle import resolve

INF = {"schema": "surgflow.inference/v1", "event_id": "e-2", "video_id": "case-0042",
       "procedure": "cholecystectomy", "model": {"name": "m", "version": 3},
       "produced_at": "2026-11-21T08:00:00Z",
       "segments": [{"start_frame": 0, "end_frame": 1250, "label": "Preparation",
                     "confidence": 0.97}]}


def _b(obj) -> bytes:
    return json.dumps(obj).encode()


def test_spec_examples_decode_and_extra_fields_are_ignored():
    e = decode("inference", _b(INF | {"extra": {"anything": 1}}))
    assert e.model.version == 3 and e.segments[0].confidence == 0.97
    ann = decode("annotations", _b({
        "schema": "surgflow.annotation/v1", "event_id": "e-3", "video_id": "case-0042",
        "annotator": "annotator-7", "task_id": "t-1", "produced_at": "2026-11-22T09:30:00Z",
        "segments": [{"start_frame": 0, "end_frame": 1300, "label": "Preparation"}]}))
    assert ann.task_id == "t-1"
    vid = decode("videos", _b({
        "schema": "surgflow.video/v1", "event_id": "e-1", "video_id": "case-0042",
        "uri": "file:///data/case-0042.mp4", "procedure": "cholecystectomy",
        "source": "hospital-a", "recorded_at": "2026-11-20T10:00:00Z"}))
    assert vid.recorded_at == datetime(2026, 11, 20, 10, tzinfo=UTC)


@pytest.mark.parametrize(("topic", "value", "reason"), [
    ("inference", b"", "not JSON"),
    ("inference", b"[1, 2]", "must be a JSON object"),
    ("inference", _b(INF | {"schema": "surgflow.inference/v2"}), "schema must be"),
    ("annotations", _b(INF), "schema must be 'surgflow.annotation/v1'"),
    ("inference", _b(INF | {"produced_at": "2026-11-21T08:00:00"}), "time zone"),
    ("inference", _b(INF | {"produced_at": "yesterday"}), "produced_at"),
    ("inference", _b(INF | {"segments": []}), "segments"),
    ("inference", _b(INF | {"segments": [{"start_frame": 5, "end_frame": 5, "label": "P",
                                          "confidence": 0.5}]}), "greater than start_frame"),
    ("inference", _b(INF | {"segments": [{"start_frame": 0, "end_frame": 5, "label": "P"}]}),
     "confidence"),
    ("inference", _b(INF | {"segments": [{"start_frame": 0, "end_frame": 5, "label": "P",
                                          "confidence": 1.5}]}), "confidence"),
    ("inference", _b(INF | {"model": {"name": "m"}}), "model.version"),
])
def test_bad_messages_say_what_is_wrong(topic, value, reason):
    with pytest.raises(WireError, match=reason):
        decode(topic, value)


def test_produced_at_is_compared_as_an_instant_not_as_text():
    # 09:00+01:00 is 08:00Z, earlier than 08:30Z although it sorts later as text.
    early = decode("inference", _b(INF | {"event_id": "a",
                                          "produced_at": "2026-11-21T09:00:00+01:00"}))
    late = decode("inference", _b(INF | {"event_id": "b", "produced_at": "2026-11-21T08:30:00Z",
                                         "segments": [{"start_frame": 0, "end_frame": 1250,
                                                       "label": "ClippingCutting",
                                                       "confidence": 0.5}]}))
    same = decode("inference", _b(INF | {"produced_at": "2026-11-21T08:00:00+00:00"}))
    assert same.produced_at == decode("inference", _b(INF)).produced_at
    events = [to_label_event(late, 0, 1), to_label_event(early, 0, 2)]
    [winner] = resolve({}, events)["case-0042"]
    assert winner.label == "ClippingCutting" and winner.event_id == "b"


def test_parking_is_idempotent_and_keeps_position(tmp_path):
    lot = ParkingLot(tmp_path)
    p = make("case-1", "e-1", "annotations", 2, 17, b'{"x": 1}')
    assert lot.park(p) and not lot.park(make("case-1", "e-1", "annotations", 0, 99, b"other"))
    [back] = lot.parked("case-1")
    assert (back.partition, back.offset, back.value) == (2, 17, b'{"x": 1}')
    assert lot.videos() == ["case-1"] and lot.count() == 1
    assert lot.park(make("case-2", "e-2", "inference", 0, 3, b"{}", "cholecystectomy"))
    assert (lot.count(), lot.count("cholecystectomy"), lot.count("appendectomy")) == (2, 1, 0)
    lot.release(back)
    assert lot.parked("case-1") == [] and lot.count() == 1


def test_an_entry_another_consumer_releases_while_it_is_listed_is_skipped(tmp_path,
                                                                         monkeypatch):
    lot = ParkingLot(tmp_path)
    kept = make("case-1", "e-1", "annotations", 0, 4, b"{}")
    gone = make("case-1", "e-2", "annotations", 0, 5, b"{}")
    assert lot.park(kept) and lot.park(gone)
    listed = sorted((lot.root / "case-1").glob("*.json"))
    lot.release(gone)  # by another consumer of the home, after listing and before reading
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(listed))
    assert [e.event_id for e in lot.parked("case-1")] == ["e-1"]
    lot.release(kept)
    assert lot.videos() == []


def test_checkpoint_moves_forward_only_and_per_cluster(tmp_path):
    cp = Checkpoint(tmp_path)
    assert cp.advance("c1", {"p.videos:0": 5, "p.videos:1": 3}) == {"p.videos:0": 5,
                                                                      "p.videos:1": 3}
    assert cp.advance("c1", {"p.videos:0": 2}) == {"p.videos:0": 5, "p.videos:1": 3}
    assert cp.positions("c2") == {}
    assert Checkpoint(tmp_path).positions("c1")["p.videos:1"] == 3


def test_dead_letter_headers_are_the_spec_names():
    d = DeadLetter("p.inference", 2, 41, b"raw", b"case-1", "message is not JSON:\n  at 1")
    assert d.headers() == [
        ("surgflow.error", b"message is not JSON: at 1"),
        ("surgflow.source.topic", b"p.inference"),
        ("surgflow.source.partition", b"2"),
        ("surgflow.source.offset", b"41"),
    ]


def test_a_revocation_drops_only_what_is_held_of_the_revoked_partitions():
    from types import SimpleNamespace

    from kafka import TopicPartition

    from surgflow.feedback.consumer import _drop_revoked

    def rec(topic: str, partition: int, offset: int):
        return SimpleNamespace(topic=topic, partition=partition, offset=offset)

    buffer = [rec("p.inference", 0, 5), rec("p.inference", 1, 7), rec("p.annotations", 0, 2),
              rec("p.inference", 0, 6)]
    first_at = [12.5]
    revoked = {TopicPartition("p.inference", 0), TopicPartition("p.videos", 0)}
    assert _drop_revoked(buffer, first_at, revoked) == 2
    assert [(m.topic, m.partition, m.offset) for m in buffer] == [
        ("p.inference", 1, 7), ("p.annotations", 0, 2)]
    assert first_at == [12.5]  # the batch in hand keeps its age
    assert _drop_revoked(buffer, first_at, {TopicPartition("p.videos", 1)}) == 0
    assert len(buffer) == 2
    everything = {TopicPartition("p.inference", 1), TopicPartition("p.annotations", 0)}
    assert _drop_revoked(buffer, first_at, everything) == 2
    assert buffer == [] and first_at == []
