"""The inference service's pure parts: events, answers, token checks, start-up rules, reels."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from surgflow.config import get_settings
from surgflow.errors import ConfigError, NotFound, UnknownName, UnsafeURI, VideoError
from surgflow.feedback.schemas import InferenceEvent, decode
from surgflow.serving.analysis import TooLong
from surgflow.serving.app import status_of, token_matches
from surgflow.serving.events import analysis_response, inference_event, inference_event_id
from surgflow.serving.highlights import Window, caption, clock, reel_windows
from surgflow.serving.pool import NotServed
from surgflow.serving.server import api_token, is_loopback

SEGMENTS = [{"start_frame": 0, "end_frame": 40, "label": "Preparation", "confidence": 0.91},
            {"start_frame": 40, "end_frame": 95, "label": "ClippingCutting", "confidence": 0.5}]


def test_inference_event_passes_the_wire_schema_and_its_id_is_stable():
    at = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    e = inference_event(video_id="case-1", procedure="cholecystectomy",
                        model_name="cholecystectomy-phase", version=3, segments=SEGMENTS,
                        produced_at=at)
    import json

    parsed = decode("inference", json.dumps(e).encode())
    assert isinstance(parsed, InferenceEvent)
    assert parsed.model.version == 3 and parsed.produced_at == at
    assert [s.end_frame for s in parsed.segments] == [40, 95]
    assert e["event_id"] == inference_event_id("case-1", "cholecystectomy-phase", 3)
    assert e["event_id"] != inference_event_id("case-1", "cholecystectomy-phase", 4)
    assert e["event_id"] != inference_event_id("case-2", "cholecystectomy-phase", 3)


def test_an_event_with_a_bad_segment_is_refused_before_it_is_sent():
    with pytest.raises(Exception, match="end_frame"):
        inference_event(video_id="case-1", procedure="cholecystectomy", model_name="m",
                        version=1, segments=[{"start_frame": 5, "end_frame": 5, "label": "A",
                                              "confidence": 0.5}])


def test_answer_repeats_the_event_segments_and_adds_key_moments():
    e = inference_event(video_id="case-1", procedure="cholecystectomy", model_name="m",
                        version=2, segments=SEGMENTS)
    moments = [{"frame": 40, "time_s": 1.6, "from_label": "Preparation",
                "to_label": "ClippingCutting"}]
    r = analysis_response(e, fps=25.0, num_frames=95, key_moments=moments)
    assert r["segments"] == e["segments"] and r["model"] == {"name": "m", "version": 2}
    assert r["key_moments"] == moments and r["num_frames"] == 95


@pytest.mark.parametrize(("header", "ok"), [
    ("Bearer s3cret", True), ("bearer s3cret", True), ("Bearer s3cret ", True),
    ("Bearer s3cre", False), ("Bearer s3cret2", False), ("Basic s3cret", False),
    ("s3cret", False), ("", False), (None, False), ("Bearer ", False),
])
def test_token_matching(header, ok):
    assert token_matches(header, "s3cret") is ok


def test_start_up_needs_a_token_unless_insecure_local_on_loopback(monkeypatch):
    monkeypatch.delenv("SURGFLOW_API_TOKEN", raising=False)
    s = get_settings()
    with pytest.raises(ConfigError, match="SURGFLOW_API_TOKEN is not set"):
        api_token(s, insecure_local=False, host="127.0.0.1")
    assert api_token(s, insecure_local=True, host="127.0.0.1") is None
    assert api_token(s, insecure_local=True, host="::1") is None
    with pytest.raises(ConfigError, match="loopback only"):
        api_token(s, insecure_local=True, host="0.0.0.0")
    monkeypatch.setenv("SURGFLOW_API_TOKEN", "tok")
    assert api_token(get_settings(), insecure_local=False, host="0.0.0.0") == "tok"
    monkeypatch.setenv("SURGFLOW_API_TOKEN", "  ")
    with pytest.raises(ConfigError):
        api_token(get_settings(), insecure_local=False, host="127.0.0.1")


@pytest.mark.parametrize(("host", "loop"), [("127.0.0.1", True), ("127.5.0.1", True),
                                            ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("0.0.0.0", False),
                                            ("10.0.0.2", False), ("example.org", False)])
def test_loopback_hosts(host, loop):
    assert is_loopback(host) is loop


def test_error_status_codes():
    assert status_of(UnsafeURI("x")) == 403
    assert status_of(NotFound("x")) == 404
    assert status_of(UnknownName("procedure", "x", [])) == 404
    assert status_of(NotServed("x")) == 409
    assert status_of(VideoError("p", "cannot be decoded")) == 422
    assert status_of(TooLong("x")) == 422
    assert status_of(RuntimeError("x")) == 500


def _moment(frame: int, fps: float = 10.0) -> dict:
    return {"frame": frame, "time_s": frame / fps, "from_label": "A", "to_label": "B"}


def test_reel_windows_surround_each_transition_and_merge_overlaps():
    ws = reel_windows([_moment(100), _moment(500), _moment(530)], 1000, 10.0, before_s=2,
                      after_s=3)
    assert [(w.start, w.end) for w in ws] == [(80, 130), (480, 560)]
    assert [len(w.moments) for w in ws] == [1, 2]
    # clipped at both ends of the video
    ws = reel_windows([_moment(5), _moment(995)], 1000, 10.0, before_s=2, after_s=3)
    assert [(w.start, w.end) for w in ws] == [(0, 35), (975, 1000)]
    # no transition: the opening seconds
    assert [(w.start, w.end) for w in reel_windows([], 1000, 10.0, after_s=3)] == [(0, 30)]
    assert reel_windows([], 0, 10.0) == []


def test_captions_name_phase_time_and_nearest_transition():
    w = Window(80, 130, (_moment(100),))
    top, bottom = caption(95, 10.0, "A", w)
    assert top == "A  00:09" and bottom == "-> B at 00:10"
    assert caption(5, 10.0, "A", Window(0, 30, ()))[1] is None
    assert clock(3725) == "1:02:05" and clock(59.9) == "00:59"
