"""End to end against the real embedded broker: produce, `feedback run --once`, `data show`."""

from __future__ import annotations

import pytest

from surgflow.config import get_settings
from surgflow.feedback.client import Publisher
from tests.feedback_helpers import (
    annotation_event,
    cli,
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
    n_tasks = sum(1 for e in labels if "model" in e for s in e["segments"]
                  if s["confidence"] < 0.6)
    _publish([], labels)  # feedback before its videos: parked durably, nothing applied
    _, parked, _ = cli("feedback", "run", "--once")
    assert parked == {"consumed": len(labels), "applied": 0, "duplicates": 0,
                      "dead_lettered": 0, "parked": len(labels), "tasks_created": 0,
                      "versions_created": []}
    assert cli("data", "show", "cholecystectomy", check=False)[0] == 2

    _publish(videos, [])
    _, report, _ = cli("feedback", "run", "--once")
    assert report == {
        "consumed": len(videos), "applied": len(videos) + len(labels), "duplicates": 0,
        "dead_lettered": 0, "parked": 0, "tasks_created": n_tasks,
        "versions_created": [{"dataset": "cholecystectomy", "version": 1}],
    }
    _, show, _ = cli("data", "show", "cholecystectomy")
    want = expected_show(synthetic_corpus, labels)
    assert {k: show[k] for k in want} == want
    assert show["version"] == 1 and show["parked_events"] == 0

    _, tasks, _ = cli("feedback", "tasks")
    assert len(tasks) == n_tasks > 0
    assert all(t["status"] == "open" for t in tasks)


def test_replay_changes_nothing(kafka, synthetic_corpus):
    videos, labels = _events(synthetic_corpus[:3])
    _publish(videos, labels, twice=True)
    _, first, _ = cli("feedback", "run", "--once")
    n = len(videos) + len(labels)
    assert (first["consumed"], first["applied"], first["duplicates"]) == (2 * n, n, n)
    assert first["versions_created"] == [{"dataset": "cholecystectomy", "version": 1}]
    _, show1, _ = cli("data", "show", "cholecystectomy")
    assert show1["events_applied"] == len(labels)

    _, again, _ = cli("feedback", "run", "--once")
    assert again["consumed"] == 0 and again["versions_created"] == []

    _publish(videos, labels)  # a third delivery of everything
    _, third, _ = cli("feedback", "run", "--once")
    assert (third["consumed"], third["applied"], third["duplicates"]) == (n, 0, n)
    assert third["versions_created"] == [] and third["tasks_created"] == 0
    _, show2, _ = cli("data", "show", "cholecystectomy")
    assert show2 == show1
