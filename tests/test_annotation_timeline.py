"""The Label Studio timeline mapping and annotation events: pure, checked frame by frame."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgflow.annotation import timeline
from surgflow.data.labels import Interval
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.feedback.schemas import AnnotationEvent, FeedbackTask, ModelRef

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _media(step: int, source_frames: int) -> timeline.Media:
    return timeline.Media("http://x/m.mp4", 25.0 / step, step, -(-source_frames // step),
                          source_frames)


@given(step=st.integers(1, 5), n=st.integers(1, 400), data=st.data())
def test_a_range_shown_and_drawn_back_covers_the_media_frames_it_showed(step, n, data):
    a = data.draw(st.integers(0, n - 1))
    b = data.draw(st.integers(a + 1, n))
    media = _media(step, n)
    shown = timeline.to_ls(a, b, step)
    # the media frames inside [a, b): source frames k*step with a <= k*step < b
    inside = [k for k in range(media.num_frames) if a <= k * step < b]
    if not inside:
        assert shown is None
        return
    assert shown == (inside[0] + 1, inside[-1] + 1)
    lo, hi = timeline.from_ls(*shown, media)
    assert lo == inside[0] * step
    assert hi == (n if inside[-1] == media.num_frames - 1 else (inside[-1] + 1) * step)


def _task(start: int, end: int) -> FeedbackTask:
    return FeedbackTask(task_id="t-1", video_id="case-1", procedure="cholecystectomy",
                        start_frame=start, end_frame=end, predicted_label="ClippingCutting",
                        confidence=0.41, model=ModelRef(name="m", version=3), created_at=NOW)


def test_the_config_offers_every_phase_and_the_prediction_marks_the_review_range():
    xml = timeline.label_config("cholecystectomy", CHOLEC80_PHASES)
    assert all(f'<Label value="{p}" hotkey="{n}"/>' in xml
               for n, p in enumerate(CHOLEC80_PHASES, 1))
    ivs = [Interval(0, 100, "Preparation", "model", 0.9, NOW, 0, 0, "i"),
           Interval(100, 150, "ClippingCutting", "human", None, NOW, 0, 1, "a"),
           Interval(150, 250, "ClippingCutting", "model", 0.5, NOW, 0, 2, "i")]
    payload = timeline.task_payload(_task(150, 250), _media(1, 250), ivs)
    pred = payload["predictions"][0]
    assert pred["model_version"] == "m@3" and pred["score"] == pytest.approx(0.7)
    regions = [(r["from_name"], r["value"]["ranges"][0]["start"], r["value"]["ranges"][0]["end"],
                r["value"]["timelinelabels"][0]) for r in pred["result"]]
    assert regions == [("phase", 1, 100, "Preparation"), ("phase", 151, 250, "ClippingCutting"),
                       ("review", 151, 250, "Review")]
    assert payload["data"]["surgflow_task_id"] == "t-1"


def _annotation(*regions, updated="2026-12-01T10:00:00.000001Z", aid=7):
    return {"id": aid, "task": 3, "project": 1, "updated_at": updated, "result": [
        {"from_name": name, "to_name": "video", "type": "timelinelabels",
         "value": {"ranges": [{"start": s, "end": e}], "timelinelabels": labels}}
        for name, s, e, labels in regions]}


def test_an_annotation_becomes_one_event_for_the_task_range_with_a_revision_id():
    data = timeline.task_payload(_task(100, 200), _media(1, 250), [])["data"]
    ann = _annotation(("phase", 1, 120, ["Preparation"]), ("phase", 121, 250, ["ClippingCutting"]),
                      ("review", 101, 200, ["Review"]))
    event = timeline.annotation_event(ann, data, "label-studio:ann@x")
    parsed = AnnotationEvent.model_validate(event)
    # cut to the task's range [100, 200); the review mark is no label
    assert [(s.start_frame, s.end_frame, s.label) for s in parsed.segments] == [
        (100, 120, "Preparation"), (120, 200, "ClippingCutting")]
    assert parsed.task_id == "t-1" and parsed.annotator == "label-studio:ann@x"
    # the same revision, the same id; an update, a new one
    assert timeline.annotation_event(ann, data, "x")["event_id"] == event["event_id"]
    later = _annotation(("phase", 1, 250, ["Preparation"]), updated="2026-12-01T11:00:00Z")
    assert timeline.annotation_event(later, data, "x")["event_id"] != event["event_id"]


def test_a_region_reaching_outside_the_video_is_kept_whole_for_the_stream_to_reject():
    data = timeline.task_payload(_task(200, 250), _media(1, 250), [])["data"]
    ann = _annotation(("phase", 201, 300, ["Preparation"]))
    segs = timeline.annotation_event(ann, data, "x")["segments"]
    assert segs == [{"start_frame": 200, "end_frame": 300, "label": "Preparation"}]


def test_the_detectors_ranges_are_shown_and_a_persons_privacy_marks_come_back():
    from surgflow.data.privacy import IN_BODY, OUT_OF_BODY

    xml = timeline.label_config("cholecystectomy", CHOLEC80_PHASES)
    assert f'<Label value="{OUT_OF_BODY}"' in xml and f'<Label value="{IN_BODY}"' in xml
    privacy = [Interval(0, 30, OUT_OF_BODY, "model", 0.99, NOW, -1, -1, "scr"),
               Interval(30, 250, IN_BODY, "model", 0.98, NOW, -1, -1, "scr")]
    payload = timeline.task_payload(_task(100, 200), _media(1, 250), [], privacy=privacy)
    regions = [(r["from_name"], r["value"]["ranges"][0]["start"], r["value"]["ranges"][0]["end"],
                r["value"]["timelinelabels"][0]) for r in payload["predictions"][0]["result"]]
    assert regions == [("privacy", 1, 30, OUT_OF_BODY), ("review", 101, 200, "Review")]
    # a person says 150-170 was out of the body too, beside the phase they saw
    ann = _annotation(("phase", 101, 200, ["ClippingCutting"]),
                      ("privacy", 151, 170, [OUT_OF_BODY]))
    segs = AnnotationEvent.model_validate(
        timeline.annotation_event(ann, payload["data"], "x")).segments
    assert [(s.start_frame, s.end_frame, s.label) for s in segs] == [
        (100, 200, "ClippingCutting"), (150, 170, OUT_OF_BODY)]
    assert timeline.ls_result([(150, 170, OUT_OF_BODY)], _media(1, 250))[0]["from_name"] == \
        "privacy"
