"""Feedback tasks: once per (video, range, model version); completed by annotations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from surgflow.config import get_settings
from surgflow.feedback import dlq
from surgflow.feedback.client import Publisher
from surgflow.feedback.schemas import FeedbackTask, InferenceEvent
from surgflow.feedback.tasks import task_id, tasks_for
from tests.feedback_helpers import annotation_event, cli, inference_event, video_event


def test_tasks_for_is_pure_and_keyed_by_video_range_and_model_version(synthetic_corpus):
    v = synthetic_corpus[0]
    confs = [0.2, 0.9, 0.59, 0.6, 0.1, 0.95, 0.3][: len(v.segments)]
    event = InferenceEvent.model_validate(inference_event(v, "e1", 1, confidences=confs))
    now = datetime(2026, 11, 22, tzinfo=UTC)
    tasks = tasks_for(event, 0.6, now)
    low = [s for s, c in zip(v.segments, confs, strict=True) if c < 0.6]
    assert [(t.start_frame, t.end_frame) for t in tasks] == [
        (s["start_frame"], s["end_frame"]) for s in low]
    # another event id, another time: the same tasks; another model version: new tasks
    resent = InferenceEvent.model_validate(inference_event(v, "e2", 9, confidences=confs))
    assert [t.task_id for t in tasks_for(resent, 0.6, now)] == [t.task_id for t in tasks]
    v4 = InferenceEvent.model_validate(inference_event(v, "e3", 9, confidences=confs, version=4))
    assert not {t.task_id for t in tasks_for(v4, 0.6, now)} & {t.task_id for t in tasks}
    assert tasks[0].task_id == task_id(v.video_id, low[0]["start_frame"], low[0]["end_frame"],
                                       "cholecystectomy-phase", 3)


@pytest.mark.integration
def test_tasks_created_once_sent_once_and_completed_by_annotation(kafka, synthetic_corpus):
    v = synthetic_corpus[0]
    confs = [0.3] + [0.9] * (len(v.segments) - 1)
    with Publisher.from_settings(get_settings()) as pub:
        pub.video(video_event(v))
        pub.inference(inference_event(v, "inf-a", 1, confidences=confs))
        pub.inference(inference_event(v, "inf-b", 2, confidences=confs))  # re-run, same model
        pub.flush()
    _, first, _ = cli("feedback", "run", "--once")
    assert first["tasks_created"] == 1
    _, tasks, _ = cli("feedback", "tasks")
    assert [t["status"] for t in tasks] == ["open"]
    task = tasks[0]
    seg = v.segments[0]
    assert (task["start_frame"], task["end_frame"], task["predicted_label"]) == (
        seg["start_frame"], seg["end_frame"], seg["label"])

    with Publisher.from_settings(get_settings()) as pub:
        pub.inference(inference_event(v, "inf-a", 1, confidences=confs))  # replayed
        pub.annotation(annotation_event(v, "ann-1", 50, [seg], task_id=task["task_id"]))
        pub.flush()
    _, second, _ = cli("feedback", "run", "--once")
    assert second["tasks_created"] == 0 and second["applied"] == 1
    _, tasks, _ = cli("feedback", "tasks")
    assert [(t["task_id"], t["status"], t["completed_by"]) for t in tasks] == [
        (task["task_id"], "completed", "ann-1")]

    on_topic = dlq.read_all(kafka.bootstrap, kafka.topic("feedback-tasks"))
    assert len(on_topic) == 1
    sent = FeedbackTask.model_validate_json(on_topic[0].value)
    assert sent.task_id == task["task_id"] and sent.video_id == v.video_id
