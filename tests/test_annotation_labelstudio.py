"""The workbench for real: feedback tasks out to a Label Studio server, an annotator's
correction back through its webhook and the poll, exactly once, with provenance; a bad one
dead-lettered and its reason written back onto the task."""

from __future__ import annotations

import json
import random
import subprocess
import time
from datetime import UTC, datetime

import httpx
import pytest

from surgflow.annotation.people import BrowserSession
from surgflow.config import get_settings
from surgflow.feedback.client import Publisher
from surgflow.processes import free_port
from tests.annotation_helpers import annotations_on_topic, regions, start_bridge, wait
from tests.cli_helpers import cli_error, run_cli, start_cli
from tests.feedback_helpers import annotation_event, inference_event, video_event

pytestmark = pytest.mark.integration


def test_a_correction_in_label_studio_reaches_a_version_once_with_provenance(
        kafka, label_studio, synthetic_corpus):
    v, w = synthetic_corpus[0], synthetic_corpus[1]
    confs_v = [0.3] + [0.9] * (len(v.segments) - 1)
    confs_w = [0.5] + [0.2] + [0.9] * (len(w.segments) - 2)
    with Publisher.from_settings(get_settings()) as pub:
        for video, confs in ((v, confs_v), (w, confs_w)):
            pub.video(video_event(video))
            pub.inference(inference_event(video, f"inf-{video.video_id}", 1, confidences=confs))
        pub.flush()
    assert run_cli("feedback", "run", "--once", json=True).data["tasks_created"] == 3

    # without a bridge nothing can show the video: a reason, not a half-made task
    assert "annotation bridge" in cli_error(1, "annotate", "sync")
    bridge, url = start_bridge(kafka.home)
    try:
        # two passes at once (an interval run and a triggered one) send each task once
        racers = [start_cli("annotate", "sync", json=True, stdout=subprocess.PIPE, text=True)
                  for _ in range(2)]
        reports = [json.loads(p.communicate(timeout=120)[0]) for p in racers]
        assert sorted(r["tasks_sent"] for r in reports) == [0, 3]
        first = next(r for r in reports if r["tasks_sent"] == 3)
        again = run_cli("annotate", "sync", json=True).data
        assert again["tasks_sent"] == 0 and again["tasks_held"] == 3  # nothing twice
        project = first["projects"]["cholecystectomy"]

        person = BrowserSession(label_studio.url, "annotator-9@hospital.example", "pass-9-ann")
        tasks = person.tasks(project)
        # most uncertain first: imported in order of confidence
        assert [t["data"]["confidence"] for t in tasks] == [0.2, 0.3, 0.5]
        top = tasks[0]
        assert top["predictions"][0]["model_version"] == "cholecystectomy-phase@3"
        assert any(r["from_name"] == "review" for r in top["predictions"][0]["result"])

        # the media: a signed link with byte ranges; a forged or foreign one is refused
        media = top["data"]["video"]
        assert media.startswith(url)
        got = httpx.get(media, headers={"Range": "bytes=0-99"}, timeout=10)
        assert got.status_code == 206 and len(got.content) == 100
        assert httpx.get(media.replace("sig=", "sig=0"), timeout=10).status_code == 403
        assert httpx.get(f"{url}/media/..%2F..%2Fetc%2Fpasswd?exp=9999999999&sig=x",
                         timeout=10).status_code in (403, 404)

        # the annotator relabels the task's range: the webhook sends it on at once
        d = top["data"]
        lo, hi = d["start_frame"] + 1, d["end_frame"]  # Label Studio's frames: 1-based
        ann = person.submit(top["id"], regions([(lo, hi, "CleaningCoagulation")]))
        events = wait(lambda: annotations_on_topic(kafka))
        assert len(events) == 1, "the webhook did not deliver the annotation"
        event = events[0]
        assert event["annotator"] == "label-studio:annotator-9@hospital.example"
        assert event["task_id"] == d["surgflow_task_id"]
        assert event["segments"] == [{"start_frame": d["start_frame"], "end_frame": d["end_frame"],
                                      "label": "CleaningCoagulation"}]
        # the poll finds it sent already; a replay of both changes nothing
        assert run_cli("annotate", "sync", json=True).data["annotations_returned"] == 0

        merged = run_cli("feedback", "run", "--once", json=True).data
        assert merged["applied"] == 1 and merged["versions_created"]
        rows = run_cli("data", "query", "SELECT start_frame, end_frame, label, provenance FROM "
                       f"segments WHERE video_id = '{d['video_id']}' AND provenance = 'human'",
                       json=True).data
        assert rows == [{"start_frame": d["start_frame"], "end_frame": d["end_frame"],
                         "label": "CleaningCoagulation", "provenance": "human"}]
        status = {t["task_id"]: t for t in run_cli("feedback", "tasks", json=True).data}
        assert status[d["surgflow_task_id"]]["status"] == "completed"
        assert status[d["surgflow_task_id"]]["completed_by"] == event["event_id"]

        # an update is a new revision: a new event, applied over the first
        person.update(ann["id"], regions([(lo, hi, "GallbladderPackaging")]))
        assert wait(lambda: len(annotations_on_topic(kafka)) == 2)
        assert run_cli("feedback", "run", "--once", json=True).data["applied"] == 1
        fingerprint = run_cli("data", "show", "cholecystectomy", json=True).data["fingerprint"]

        # a label outside the taxonomy: dead-lettered by the feedback flow, and the reason
        # is written back onto the task for the annotator
        bad = tasks[1]
        b = bad["data"]
        person.submit(bad["id"], regions([(b["start_frame"] + 1, b["end_frame"], "Lunch")]))
        assert wait(lambda: len(annotations_on_topic(kafka)) == 3)
        run_cli("feedback", "run", "--once", json=True)
        report = run_cli("annotate", "sync", json=True).data
        assert report["problems_reported"] == 1
        fixed = next(t for t in person.tasks(project) if t["id"] == bad["id"])
        assert "unknown label 'Lunch'" in fixed["data"]["fix"]
        assert run_cli("annotate", "sync", json=True).data["problems_reported"] == 0  # once
        # nothing drawn in the task's range: no segments, dead-lettered too, reason written back
        empty = tasks[2]
        e = empty["data"]
        outside = e["end_frame"] + 2 if e["end_frame"] + 2 <= e["media_frames"] else 1
        person.submit(empty["id"], regions([(outside, outside, "Preparation")]))
        assert wait(lambda: len(annotations_on_topic(kafka)) == 4)
        run_cli("feedback", "run", "--once", json=True)
        assert run_cli("annotate", "sync", json=True).data["problems_reported"] == 1
        fixed = next(t for t in person.tasks(project) if t["id"] == empty["id"])
        assert "segments" in fixed["data"]["fix"], fixed["data"]["fix"]
        # replaying everything (webhook and poll deliveries alike) changes no version
        with Publisher.from_settings(get_settings()) as pub:
            for e in annotations_on_topic(kafka):  # the broken ones as they were sent
                pub.send_raw("annotations", json.dumps(e).encode(), key=e["video_id"])
            pub.flush()
        run_cli("feedback", "run", "--once", json=True)
        assert run_cli("data", "show", "cholecystectomy", json=True).data[
            "fingerprint"] == fingerprint
    finally:
        bridge.terminate()
        bridge.wait(10)


def test_a_bad_label_studio_url_or_token_stops_with_the_variable_named(kafka, label_studio):
    assert "SURGFLOW_LABEL_STUDIO_TOKEN" in cli_error(
        2, "annotate", "sync", env={"SURGFLOW_LABEL_STUDIO_TOKEN": "not-the-token"})
    assert "SURGFLOW_LABEL_STUDIO_URL" in cli_error(
        2, "annotate", "sync", env={"SURGFLOW_LABEL_STUDIO_URL": f"http://127.0.0.1:{free_port()}"})
    assert "SURGFLOW_LABEL_STUDIO_URL" in cli_error(
        2, "annotate", "sync", env={"SURGFLOW_LABEL_STUDIO_URL": "ftp://somewhere"})


def test_a_task_closed_in_surgflow_leaves_the_annotators_queue(kafka, label_studio,
                                                               synthetic_corpus):
    v = synthetic_corpus[3]
    confs = [0.3] + [0.9] * (len(v.segments) - 1)
    with Publisher.from_settings(get_settings()) as pub:
        pub.video(video_event(v))
        pub.inference(inference_event(v, "inf-close", 1, confidences=confs))
        pub.flush()
    run_cli("feedback", "run", "--once", json=True)
    bridge, _ = start_bridge(kafka.home)
    try:
        project = run_cli("annotate", "sync", json=True).data["projects"]["cholecystectomy"]
    finally:
        bridge.terminate()
        bridge.wait(10)
    # another route labels the range (a reviewer's full-video labels, no task id)
    with Publisher.from_settings(get_settings()) as pub:
        pub.annotation(annotation_event(v, "ann-full", 30, v.segments))
        pub.flush()
    run_cli("feedback", "run", "--once", json=True)
    (task,) = run_cli("feedback", "tasks", json=True).data
    assert task["status"] == "closed"
    # no bridge is needed for what is held already; the closed task is marked done there
    report = run_cli("annotate", "sync", json=True).data
    assert report["tasks_closed"] == 1 and report["annotations_returned"] == 0
    person = BrowserSession(label_studio.url, "annotator-8@hospital.example", "pass-8-ann")
    (ls_task,) = person.tasks(project)
    assert ls_task["is_labeled"] and "Closed in surgflow" in ls_task["data"]["fix"]
    assert run_cli("annotate", "sync", json=True).data["tasks_closed"] == 0  # once


def _kill_loop(args: tuple[str, ...], home, kills: int, seed: int) -> None:
    """Run ``surgflow ARGS`` and SIGKILL it at a random moment, ``kills`` times; then once
    to the end."""
    rng = random.Random(seed)
    for _ in range(kills):
        proc = start_cli(*args, home=home, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 3.0))
        proc.kill()
        proc.wait()
    run_cli(*args, home=home, json=True)


def _publish_inputs(videos) -> None:
    with Publisher.from_settings(get_settings()) as pub:
        for n, video in enumerate(videos):
            confs = [0.2 + 0.05 * n, 0.9, 0.3] + [0.9] * (len(video.segments) - 3)
            pub.video(video_event(video))
            pub.inference(inference_event(video, f"inf-{video.video_id}", 1, confidences=confs))
        pub.flush()


def test_sync_and_feedback_killed_mid_pass_end_with_an_uninterrupted_runs_fingerprint(
        kafka, label_studio, synthetic_corpus, tmp_path, monkeypatch):
    from surgflow.annotation.timeline import ls_result, media_of
    from surgflow.feedback.simulation import annotation

    videos = synthetic_corpus[:3]
    _publish_inputs(videos)
    run_cli("feedback", "run", "--once", json=True)
    bridge, _ = start_bridge(kafka.home)
    try:
        project = run_cli("annotate", "sync", json=True).data["projects"]["cholecystectomy"]
    finally:  # no webhook from here on: only the poll returns the annotations
        bridge.terminate()
        bridge.wait(10)
    person = BrowserSession(label_studio.url, "annotator-7@hospital.example", "pass-7-ann")
    by_id = {v.video_id: v for v in videos}
    tasks = person.tasks(project)
    assert len(tasks) == 6
    for t in tasks:
        d = t["data"]
        truth = annotation(by_id[d["video_id"]], "x", datetime.now(UTC), d["start_frame"],
                           d["end_frame"])["segments"]
        person.submit(t["id"], ls_result([(s["start_frame"], s["end_frame"], s["label"])
                                          for s in truth], media_of(d)))

    _kill_loop(("annotate", "sync"), kafka.home, kills=2, seed=1)
    _kill_loop(("feedback", "run", "--once"), kafka.home, kills=2, seed=2)
    crashed = run_cli("data", "show", "cholecystectomy", json=True).data

    # the same inputs on another home and topics, nothing interrupted, the same server
    other = tmp_path / "uninterrupted"
    other.mkdir()
    monkeypatch.setenv("SURGFLOW_HOME", str(other))
    monkeypatch.setenv("SURGFLOW_TOPIC_PREFIX", kafka.prefix + "ref.")
    _publish_inputs(videos)
    run_cli("feedback", "run", "--once", json=True)
    assert run_cli("annotate", "sync", json=True).data["annotations_returned"] == 6
    run_cli("feedback", "run", "--once", json=True)
    reference = run_cli("data", "show", "cholecystectomy", json=True).data
    assert crashed["fingerprint"] == reference["fingerprint"]
    assert crashed["provenance_frames"] == reference["provenance_frames"]
    assert crashed["provenance_frames"]["human"] > 0
    done = [t for t in run_cli("feedback", "tasks", json=True).data if t["status"] == "completed"]
    assert len(done) == 6


def test_status_says_where_label_studio_answers_and_starts_nothing(label_studio, tmp_path):
    fresh = tmp_path / "fresh"
    idle = run_cli("annotate", "status", json=True, home=fresh,
                   unset=("SURGFLOW_LABEL_STUDIO_URL", "SURGFLOW_LABEL_STUDIO_TOKEN")).data
    assert idle == {"running": False, "url": None, "embedded": True, "login": None,
                    "password": None, "bridge": None}
    assert not (fresh / "label-studio.json").exists()
    existing = run_cli("annotate", "status", json=True).data
    assert existing["running"] and existing["url"] == label_studio.url
    assert existing["embedded"] is False and existing["login"] is None
