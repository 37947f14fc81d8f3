"""`surgflow feedback publish`, and feedback parked until `data ingest` registers the video."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli
from tests.feedback_helpers import annotation_event, inference_event, video_event

pytestmark = pytest.mark.integration


def test_publish_validates_before_sending(kafka, synthetic_corpus, tmp_path):
    v = synthetic_corpus[0]
    good = tmp_path / "events.json"
    good.write_text(json.dumps([inference_event(v, "i1", 1), inference_event(v, "i2", 2)]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(inference_event(v, "i3", 3) | {"produced_at": "noon"}))

    r = run_cli("feedback", "publish", "inference", str(bad), json=True, check=False)
    assert r.returncode == 2 and r.data is None and "produced_at" in r.stderr
    r = run_cli("feedback", "publish", "annotation", str(good), json=True, check=False)
    assert r.returncode == 2 and "surgflow.annotation/v1" in r.stderr  # wrong kind

    out = run_cli("feedback", "publish", "inference", str(good), json=True).data
    assert out == {"published": 2, "kind": "inference", "event_ids": ["i1", "i2"]}
    vid = tmp_path / "video.json"
    vid.write_text(json.dumps(video_event(v)))
    run_cli("feedback", "publish", "video", str(vid), json=True)
    report = run_cli("feedback", "run", "--once", json=True).data
    assert (report["consumed"], report["applied"], report["dead_lettered"]) == (3, 3, 0)


def test_parked_feedback_applies_when_the_video_is_ingested(kafka, synthetic_corpus, tmp_path):
    v = synthetic_corpus[1]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(annotation_event(v, "a1", 5, v.segments)))
    run_cli("feedback", "publish", "annotation", str(ann), json=True)
    first = run_cli("feedback", "run", "--once", json=True).data
    assert first["parked"] == 1 and first["versions_created"] == []

    run_cli("data", "ingest", str(v.path), "--procedure", "cholecystectomy", "--source",
            v.hospital, json=True)
    second = run_cli("feedback", "run", "--once", json=True).data
    assert second["consumed"] == 0 and second["applied"] == 2  # the video and its annotation
    show = run_cli("data", "show", "cholecystectomy", json=True).data
    assert show["provenance_frames"] == {"human": v.num_frames, "model": 0}
    assert show["parked_events"] == 0
    third = run_cli("feedback", "run", "--once", json=True).data
    assert third["applied"] == 0 and third["versions_created"] == []


def test_dead_letters_without_a_running_broker_start_none(surgflow_home):
    assert run_cli("feedback", "dlq", json=True).data == []
    assert run_cli("broker", "status", json=True).data["running"] is False
    assert not (surgflow_home / "broker.json").exists()
