"""Feedback tasks: once per (video, range, model version); none where humans labelled the
range already; completed by an annotation naming them, closed by human labels covering them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from surgflow.config import get_settings
from surgflow.data.labels import Interval
from surgflow.feedback import dlq
from surgflow.feedback.client import Publisher
from surgflow.feedback.merge import BatchMerger, Record
from surgflow.feedback.schemas import FeedbackTask, InferenceEvent, ModelRef
from surgflow.feedback.tasks import TaskLedger, covered, decide, human_ranges, task_id, tasks_for
from tests.cli_helpers import run_cli
from tests.feedback_helpers import annotation_event, inference_event, video_event

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def test_tasks_for_is_pure_and_keyed_by_video_range_and_model_version(synthetic_corpus):
    v = synthetic_corpus[0]
    confs = [0.2, 0.9, 0.59, 0.6, 0.1, 0.95, 0.3][: len(v.segments)]
    event = InferenceEvent.model_validate(inference_event(v, "e1", 1, confidences=confs))
    tasks = tasks_for(event, 0.6, NOW)
    low = [s for s, c in zip(v.segments, confs, strict=True) if c < 0.6]
    assert [(t.start_frame, t.end_frame) for t in tasks] == [
        (s["start_frame"], s["end_frame"]) for s in low]
    # another event id, another time: the same tasks; another model version: new tasks
    resent = InferenceEvent.model_validate(inference_event(v, "e2", 9, confidences=confs))
    assert [t.task_id for t in tasks_for(resent, 0.6, NOW)] == [t.task_id for t in tasks]
    v4 = InferenceEvent.model_validate(inference_event(v, "e3", 9, confidences=confs, version=4))
    assert not {t.task_id for t in tasks_for(v4, 0.6, NOW)} & {t.task_id for t in tasks}
    assert tasks[0].task_id == task_id(v.video_id, low[0]["start_frame"], low[0]["end_frame"],
                                       "cholecystectomy-phase", 3)


def _iv(start: int, end: int, provenance: str, event_id: str) -> Interval:
    return Interval(start, end, "Preparation", provenance,
                    None if provenance == "human" else 0.5, NOW, 0, 0, event_id)


def _task(video_id: str, start: int, end: int) -> FeedbackTask:
    return FeedbackTask(
        task_id=task_id(video_id, start, end, "m", 1), video_id=video_id,
        procedure="cholecystectomy", start_frame=start, end_frame=end,
        predicted_label="Preparation", confidence=0.3, model=ModelRef(name="m", version=1),
        created_at=NOW)


def test_human_ranges_merge_touching_and_overlapping_human_intervals_only():
    ivs = [_iv(50, 80, "human", "a"), _iv(0, 10, "human", "b"), _iv(10, 20, "human", "c"),
           _iv(20, 50, "model", "m"), _iv(70, 90, "human", "d")]
    assert human_ranges(ivs) == [(0, 20), (50, 90)]
    assert covered(0, 20, [(0, 20), (50, 90)]) and covered(55, 90, [(0, 20), (50, 90)])
    assert not covered(0, 21, [(0, 20), (50, 90)])
    assert not covered(10, 60, [(0, 20), (50, 90)])  # a gap of model frames in between
    assert not covered(0, 1, [])


def test_decide_raises_only_ranges_humans_left_and_closes_the_covered_open_ones():
    intervals = {
        "a": [_iv(0, 100, "human", "ann-a")],  # fully annotated
        "b": [_iv(0, 40, "human", "ann-b1"), _iv(40, 60, "model", "inf"),
              _iv(60, 100, "human", "ann-b2")],
    }
    fully = _task("a", 10, 50)
    partly = _task("b", 30, 70)  # frames 40..60 still only have the model's label
    inside = _task("b", 60, 90)
    unknown = _task("c", 0, 10)  # a video with no human labels at all
    got = decide([fully, partly, inside, unknown], [], intervals)
    assert got.create == [partly, unknown] and got.close == []

    # open tasks: closed when covered, by the human event holding most of their frames
    open_tasks = [_task("b", 0, 50), _task("b", 35, 70), _task("b", 70, 100), _task("a", 0, 100)]
    got = decide([], open_tasks, intervals | {"b": [_iv(0, 30, "human", "ann-z"),
                                                    _iv(30, 100, "human", "ann-y")]})
    assert got.create == []
    assert got.close == sorted([(open_tasks[0].task_id, "ann-z"),  # 30 of its 50 frames
                                (open_tasks[1].task_id, "ann-y"),
                                (open_tasks[2].task_id, "ann-y"),
                                (open_tasks[3].task_id, "ann-a")])
    # ties between covering events go to the smallest event id: the same answer every time
    tie = _task("d", 0, 20)
    got = decide([], [tie], {"d": [_iv(10, 20, "human", "x"), _iv(0, 10, "human", "y")]})
    assert got.close == [(tie.task_id, "x")]


def test_ledger_finds_open_tasks_by_video_and_keeps_completed_apart_from_closed(tmp_path):
    ledger = TaskLedger(tmp_path)
    a1, a2, b = _task("case/a", 0, 10), _task("case/a", 10, 20), _task("b", 0, 10)
    assert [ledger.create(t) for t in (a1, a2, b, a1)] == [True, True, True, False]
    assert {t.task_id for t in ledger.open_for(["case/a"])} == {a1.task_id, a2.task_id}
    assert ledger.complete(a1.task_id, "ann-1", NOW)
    assert ledger.close(a2.task_id, "ann-2", NOW)
    assert not ledger.close(a1.task_id, "ann-3", NOW)  # done once, whichever way
    assert ledger.open_for(["case/a", "b", "nobody"]) == [b]
    status = {t["task_id"]: (t["status"], t["completed_by"]) for t in ledger.list()}
    assert status == {a1.task_id: ("completed", "ann-1"), a2.task_id: ("closed", "ann-2"),
                      b.task_id: ("open", None)}
    # a task done before it was ever acknowledged on the topic is not sent again
    assert ledger.unpublished() == [b]


class _Sent:
    """What a batch sends, in place of the Kafka producer."""

    def __init__(self):
        self.messages: list[tuple[str, bytes]] = []

    def send(self, topic, value, key, headers):
        self.messages.append((topic, value))

    def flush(self):
        pass


def _record(topic: str, offset: int, event: dict) -> Record:
    return Record(topic, 0, offset, event["video_id"].encode(), json.dumps(event).encode())


@pytest.mark.parametrize("inference_first", [True, False],
                         ids=["inference-first", "annotation-first"])
def test_a_batch_raises_no_task_for_frames_its_own_annotations_label(
        surgflow_home, synthetic_corpus, inference_first):
    """The order of the two events inside one batch (as a consumer group polls them) does not
    matter: the decision is made against the version the batch wrote."""
    v = synthetic_corpus[0]
    inference = _record("inference", 0, inference_event(
        v, "inf", 10, confidences=[0.3] * len(v.segments)))
    annotation = _record("annotations", 0, annotation_event(v, "ann", 5, v.segments))
    labels = [inference, annotation] if inference_first else [annotation, inference]
    sent = _Sent()
    report = BatchMerger(get_settings(), sent).process(
        [_record("videos", 0, video_event(v)), *labels], {})
    assert report.applied == 3 and report.tasks_created == 0
    assert [topic for topic, _ in sent.messages] == []
    assert TaskLedger(surgflow_home).list() == []


@pytest.mark.integration
def test_tasks_created_once_sent_once_and_completed_by_annotation(kafka, synthetic_corpus):
    v = synthetic_corpus[0]
    confs = [0.3] + [0.9] * (len(v.segments) - 1)
    with Publisher.from_settings(get_settings()) as pub:
        pub.video(video_event(v))
        pub.inference(inference_event(v, "inf-a", 1, confidences=confs))
        pub.inference(inference_event(v, "inf-b", 2, confidences=confs))  # re-run, same model
        pub.flush()
    first = run_cli("feedback", "run", "--once", json=True).data
    assert first["tasks_created"] == 1
    tasks = run_cli("feedback", "tasks", json=True).data
    assert [t["status"] for t in tasks] == ["open"]
    task = tasks[0]
    seg = v.segments[0]
    assert (task["start_frame"], task["end_frame"], task["predicted_label"]) == (
        seg["start_frame"], seg["end_frame"], seg["label"])

    with Publisher.from_settings(get_settings()) as pub:
        pub.inference(inference_event(v, "inf-a", 1, confidences=confs))  # replayed
        pub.annotation(annotation_event(v, "ann-1", 50, [seg], task_id=task["task_id"]))
        pub.flush()
    second = run_cli("feedback", "run", "--once", json=True).data
    assert second["tasks_created"] == 0 and second["applied"] == 1
    tasks = run_cli("feedback", "tasks", json=True).data
    assert [(t["task_id"], t["status"], t["completed_by"]) for t in tasks] == [
        (task["task_id"], "completed", "ann-1")]

    on_topic = dlq.read_all(kafka.bootstrap, kafka.topic("feedback-tasks"))
    assert len(on_topic) == 1
    sent = FeedbackTask.model_validate_json(on_topic[0].value)
    assert sent.task_id == task["task_id"] and sent.video_id == v.video_id


@pytest.mark.integration
def test_no_task_for_annotated_frames_and_open_tasks_closed_by_covering_labels(
        kafka, synthetic_corpus):
    annotated, annotated_late, open_one = synthetic_corpus[:3]
    low = lambda v: [0.3] * len(v.segments)  # noqa: E731 - every segment is a task candidate
    with Publisher.from_settings(get_settings()) as pub:
        for v in (annotated, annotated_late, open_one):
            pub.video(video_event(v))
        # the same batch: the inference event after the annotation of the same frames
        pub.annotation(annotation_event(annotated, "ann-a", 5, annotated.segments))
        pub.inference(inference_event(annotated, "inf-a", 10, confidences=low(annotated)))
        # ... and before it (the annotation wins the frames all the same)
        pub.inference(inference_event(annotated_late, "inf-b", 10,
                                      confidences=low(annotated_late)))
        pub.annotation(annotation_event(annotated_late, "ann-b", 5, annotated_late.segments))
        pub.inference(inference_event(open_one, "inf-c", 10, confidences=low(open_one)))
        pub.flush()
    first = run_cli("feedback", "run", "--once", json=True).data
    assert first["tasks_created"] == len(open_one.segments)
    tasks = run_cli("feedback", "tasks", json=True).data
    assert {t["video_id"] for t in tasks} == {open_one.video_id}

    # a later inference for already annotated frames raises nothing; an annotation without a
    # task_id covering all but the last open task's range closes them; that one stays open
    *covered_segs, last = open_one.segments
    with Publisher.from_settings(get_settings()) as pub:
        pub.inference(inference_event(annotated, "inf-a4", 20, confidences=low(annotated),
                                      version=4))
        pub.annotation(annotation_event(open_one, "ann-c", 30, covered_segs))
        pub.flush()
    second = run_cli("feedback", "run", "--once", json=True).data
    assert second["tasks_created"] == 0
    tasks = run_cli("feedback", "tasks", json=True).data
    by_range = {(t["start_frame"], t["end_frame"]): (t["status"], t["completed_by"])
                for t in tasks}
    assert by_range == {(s["start_frame"], s["end_frame"]): ("closed", "ann-c")
                        for s in covered_segs} | {
        (last["start_frame"], last["end_frame"]): ("open", None)}
    still_open = run_cli("feedback", "tasks", "--status", "open", json=True).data
    assert [(t["start_frame"], t["end_frame"]) for t in still_open] == [
        (last["start_frame"], last["end_frame"])]

    on_topic = dlq.read_all(kafka.bootstrap, kafka.topic("feedback-tasks"))
    assert sorted(FeedbackTask.model_validate_json(m.value).task_id for m in on_topic) == sorted(
        t["task_id"] for t in tasks)


def test_tasks_of_held_videos_wait_off_the_topic_until_the_rule_clears_them(
        surgflow_home, synthetic_corpus):
    v, w = synthetic_corpus[0], synthetic_corpus[1]
    held = {v.video_id: "not screened yet"}
    sent = _Sent()
    merger = BatchMerger(get_settings(), sent, hold=lambda ids: {
        i: held[i] for i in ids if i in held})
    records = [_record("videos", 0, video_event(v)), _record("videos", 1, video_event(w))]
    records += [_record("inference", n, inference_event(x, f"inf-{x.video_id}", 10,
                                                        confidences=[0.3] * len(x.segments)))
                for n, x in enumerate((v, w))]
    report = merger.process(records, {})
    # every task is recorded; only the cleared video's go out
    assert report.tasks_created == len(v.segments) + len(w.segments)
    assert {json.loads(value)["video_id"] for topic, value in sent.messages
            if topic == "feedback-tasks"} == {w.video_id}
    assert [t.video_id for t in TaskLedger(surgflow_home).held()] == [v.video_id] * len(
        v.segments)
    assert not merger.releasable()
    merger.process([], {})
    assert len(sent.messages) == len(w.segments)  # still held: nothing new goes out
    held.clear()  # the video is cleared
    assert merger.releasable()
    merger.process([], {})
    out = [json.loads(value) for topic, value in sent.messages if topic == "feedback-tasks"]
    assert sorted(t["video_id"] for t in out) == sorted(
        [v.video_id] * len(v.segments) + [w.video_id] * len(w.segments))
    assert TaskLedger(surgflow_home).held() == [] and not merger.releasable()
    merger.process([], {})
    assert len(sent.messages) == len(out)  # sent once
