"""End to end against the real embedded broker: produce, `feedback run --once`, `data show`."""

from __future__ import annotations

import pytest

from surgflow.config import get_settings
from surgflow.feedback.client import Publisher
from tests.cli_helpers import run_cli
from tests.feedback_helpers import (
    annotation_event,
    expected_show,
    inference_event,
    video_event,
)

pytestmark = pytest.mark.integration


def _events(corpus):
    videos = [video_event(v) for v in corpus]
    labels = []
    for i, v in enumerate(corpus):
        confs = [0.95 if j % 3 else 0.4 for j in range(len(v.segments))]
        labels.append(inference_event(v, f"inf-{v.video_id}", minutes=i, confidences=confs))
        if i % 2 == 0:  # humans refine the first half of every other video
            half = v.num_frames // 2
            labels.append(annotation_event(v, f"ann-{v.video_id}", 100 + i,
                                           [{"start_frame": 0, "end_frame": half,
                                             "label": "CalotTriangleDissection"}]))
        # a later model output for part of the video: beats the older model, not the human
        labels.append(inference_event(
            v, f"inf2-{v.video_id}", minutes=200 + i, version=4, confidences=[0.8],
            segments=[{"start_frame": 10, "end_frame": v.num_frames - 10,
                       "label": "ClippingCutting"}]))
    return videos, labels


def _publish(videos, labels, twice: bool = False) -> None:
    with Publisher.from_settings(get_settings()) as pub:
        for _ in range(2 if twice else 1):
            for e in labels:
                pub.publish("inference" if "model" in e else "annotation", e)
            for e in videos:
                pub.video(e)
        pub.flush()


def test_end_to_end_counts_match_an_independent_expectation(kafka, synthetic_corpus):
    videos, labels = _events(synthetic_corpus)
    human = {e["video_id"]: e["segments"][0]["end_frame"] for e in labels if "model" not in e}
    # a low-confidence segment inside frames humans labelled raises no task
    n_tasks = sum(1 for e in labels if "model" in e for s in e["segments"]
                  if s["confidence"] < 0.6 and s["end_frame"] > human.get(e["video_id"], 0))
    _publish([], labels)  # feedback before its videos: parked durably, nothing applied
    parked = run_cli("feedback", "run", "--once", json=True).data
    assert parked == {"consumed": len(labels), "applied": 0, "duplicates": 0,
                      "dead_lettered": 0, "parked": len(labels), "tasks_created": 0,
                      "versions_created": []}
    assert run_cli("data", "show", "cholecystectomy", check=False, json=True).returncode == 2

    _publish(videos, [])
    report = run_cli("feedback", "run", "--once", json=True).data
    assert report == {
        "consumed": len(videos), "applied": len(videos) + len(labels), "duplicates": 0,
        "dead_lettered": 0, "parked": 0, "tasks_created": n_tasks,
        "versions_created": [{"dataset": "cholecystectomy", "version": 1}],
    }
    show = run_cli("data", "show", "cholecystectomy", json=True).data
    want = expected_show(synthetic_corpus, labels)
    assert {k: show[k] for k in want} == want
    assert show["version"] == 1 and show["parked_events"] == 0

    tasks = run_cli("feedback", "tasks", json=True).data
    assert len(tasks) == n_tasks > 0
    assert all(t["status"] == "open" for t in tasks)


def test_replay_changes_nothing(kafka, synthetic_corpus):
    videos, labels = _events(synthetic_corpus[:3])
    _publish(videos, labels, twice=True)
    first = run_cli("feedback", "run", "--once", json=True).data
    n = len(videos) + len(labels)
    assert (first["consumed"], first["applied"], first["duplicates"]) == (2 * n, n, n)
    assert first["versions_created"] == [{"dataset": "cholecystectomy", "version": 1}]
    show1 = run_cli("data", "show", "cholecystectomy", json=True).data
    assert show1["events_applied"] == len(labels)

    again = run_cli("feedback", "run", "--once", json=True).data
    assert again["consumed"] == 0 and again["versions_created"] == []

    _publish(videos, labels)  # a third delivery of everything
    third = run_cli("feedback", "run", "--once", json=True).data
    assert (third["consumed"], third["applied"], third["duplicates"]) == (n, 0, n)
    assert third["versions_created"] == [] and third["tasks_created"] == 0
    show2 = run_cli("data", "show", "cholecystectomy", json=True).data
    assert show2 == show1


def _two_procedure_stream(corpus, tmp_path):
    from surgflow.data.synthetic import generate_video
    from surgflow.data.taxonomy import ProcedureCatalog

    labels = ["Access", "Resection", "Closure"]
    ProcedureCatalog(get_settings().home).add("appendectomy", labels)
    app = generate_video(tmp_path / "app-0001.mp4", seed=3, duration_s=4, labels=labels,
                         procedure="appendectomy")
    videos = [video_event(v) for v in corpus[:2]]
    videos.append(video_event(app) | {"procedure": "appendectomy"})
    events = [("annotation", annotation_event(app, "app-a", 1, app.segments))]
    for i in range(2000):  # a big merge for the second dataset: a wide window to crash in
        v = corpus[i % 2]
        seg = {"start_frame": i % 50, "end_frame": i % 50 + 40, "label": "Preparation"}
        events.append(("inference", inference_event(v, f"m{i}", i, confidences=[0.9],
                                                    segments=[seg])))
    return videos, events


def test_crash_between_two_dataset_versions_skips_nothing(kafka, synthetic_corpus, tmp_path):
    import subprocess
    import time

    from tests.cli_helpers import start_cli

    videos, events = _two_procedure_stream(synthetic_corpus, tmp_path)
    with Publisher.from_settings(get_settings()) as pub:
        for e in videos:
            pub.video(e)
        for kind, e in events:
            pub.publish(kind, e)
        pub.flush()

    log = tmp_path / "once.log"
    with open(log, "w") as err:
        proc = start_cli("feedback", "run", "--once", json=True, stdout=subprocess.DEVNULL,
                         stderr=err)
        deadline = time.monotonic() + 120
        while "dataset appendectomy: version 1" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.001)
        proc.kill()  # after the first dataset's version, before (or while) the second's
        proc.wait()
    # the second dataset's merge takes far longer than the kill: it has no version yet
    assert run_cli("data", "show", "cholecystectomy", check=False, json=True).returncode == 2

    report = run_cli("feedback", "run", "--once", json=True).data
    assert {"dataset": "appendectomy", "version": 2} not in report["versions_created"]
    chole = run_cli("data", "show", "cholecystectomy", json=True).data
    app = run_cli("data", "show", "appendectomy", json=True).data
    assert chole["events_applied"] == len(events) - 1 and chole["videos"] == 2
    assert app["events_applied"] == 1 and app["version"] == 1 and app["videos"] == 1
    again = run_cli("feedback", "run", "--once", json=True).data
    assert again["versions_created"] == [] and again["consumed"] == 0
