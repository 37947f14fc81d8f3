"""`surgflow feedback publish`, and feedback parked until `data ingest` registers the video."""

from __future__ import annotations

import json

import pytest

from tests.feedback_helpers import annotation_event, cli, inference_event, video_event

pytestmark = pytest.mark.integration


def test_publish_validates_before_sending(kafka, synthetic_corpus, tmp_path):
    v = synthetic_corpus[0]
    good = tmp_path / "events.json"
    good.write_text(json.dumps([inference_event(v, "i1", 1), inference_event(v, "i2", 2)]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(inference_event(v, "i3", 3) | {"produced_at": "noon"}))

    code, out, err = cli("feedback", "publish", "inference", str(bad), check=False)
    assert code == 2 and out is None and "produced_at" in err
    code, out, err = cli("feedback", "publish", "annotation", str(good), check=False)
    assert code == 2 and "surgflow.annotation/v1" in err  # wrong kind for these events

    _, out, _ = cli("feedback", "publish", "inference", str(good))
    assert out == {"published": 2, "kind": "inference", "event_ids": ["i1", "i2"]}
    vid = tmp_path / "video.json"
    vid.write_text(json.dumps(video_event(v)))
    cli("feedback", "publish", "video", str(vid))
    _, report, _ = cli("feedback", "run", "--once")
    assert (report["consumed"], report["applied"], report["dead_lettered"]) == (3, 3, 0)


def test_parked_feedback_applies_when_the_video_is_ingested(kafka, synthetic_corpus, tmp_path):
    v = synthetic_corpus[1]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(annotation_event(v, "a1", 5, v.segments)))
    cli("feedback", "publish", "annotation", str(ann))
    _, first, _ = cli("feedback", "run", "--once")
    assert first["parked"] == 1 and first["versions_created"] == []

    cli("data", "ingest", str(v.path), "--procedure", "cholecystectomy", "--source", v.hospital)
    _, second, _ = cli("feedback", "run", "--once")
    assert second["consumed"] == 0 and second["applied"] == 2  # the video and its annotation
    _, show, _ = cli("data", "show", "cholecystectomy")
    assert show["provenance_frames"] == {"human": v.num_frames, "model": 0}
    assert show["parked_events"] == 0
    _, third, _ = cli("feedback", "run", "--once")
    assert third["applied"] == 0 and third["versions_created"] == []


def test_dead_letters_without_a_running_broker_start_none(surgflow_home):
    assert cli("feedback", "dlq")[1] == []
    assert cli("broker", "status")[1]["running"] is False
    assert not (surgflow_home / "broker.json").exists()
