"""The improved feedback selection: windows that tile each video, spent greedily within a budget,
most uncertain first, transitions before phases, discounted for repeats of a kind and a video."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgflow.feedback.schemas import InferenceEvent
from surgflow.feedback.selection import candidates, select

LABELS = ("Preparation", "CalotTriangleDissection", "ClippingCutting", "GallbladderDissection")


def event(video_id: str, segments: list[tuple[int, int, str, float]]) -> InferenceEvent:
    return InferenceEvent.model_validate({
        "schema": "surgflow.inference/v1", "event_id": f"inf-{video_id}", "video_id": video_id,
        "procedure": "cholecystectomy", "model": {"name": "cholecystectomy-phase", "version": 1},
        "produced_at": "2026-11-21T08:00:00Z",
        "segments": [{"start_frame": a, "end_frame": b, "label": lbl, "confidence": c}
                     for a, b, lbl, c in segments]})


def two_phases(video_id: str, confidence: float, labels: tuple[str, str] = LABELS[:2],
               length: int = 100) -> InferenceEvent:
    return event(video_id, [(0, length, labels[0], confidence),
                            (length, 2 * length, labels[1], confidence)])


def frames(picks) -> int:
    return sum(p.end_frame - p.start_frame for p in picks)


@st.composite
def timelines(draw):
    lengths = draw(st.lists(st.integers(1, 60), min_size=1, max_size=12))
    segs, start = [], 0
    for i, n in enumerate(lengths):
        segs.append((start, start + n, LABELS[i % len(LABELS)],
                     draw(st.floats(0.0, 1.0, allow_nan=False))))
        start += n
    return segs


@settings(max_examples=150, deadline=None)
@given(timelines(), st.integers(1, 40))
def test_windows_tile_the_video_and_every_boundary_lies_in_a_transition_window(segs, window):
    ws = candidates(event("v", segs), window)
    assert ws[0].start_frame == 0 and ws[-1].end_frame == segs[-1][1]
    for a, b in pairwise(ws):
        assert a.end_frame == b.start_frame  # no gap, no overlap
    for w in ws:
        assert w.end_frame > w.start_frame
        if w.kind == "phase":
            assert w.end_frame - w.start_frame <= window
            assert not any(w.start_frame < s[0] < w.end_frame for s in segs)
    boundaries = [s[0] for s in segs[1:]]
    for b in boundaries:
        assert any(w.kind == "transition" and w.start_frame <= b < w.end_frame for w in ws)
    # uncertainty is one minus the frame-weighted confidence, checked against a per-frame sum
    per_frame = [c for a, e, _, c in segs for _ in range(a, e)]
    for w in ws:
        expected = 1 - sum(per_frame[w.start_frame:w.end_frame]) / (w.end_frame - w.start_frame)
        assert w.uncertainty == pytest.approx(expected)


@settings(max_examples=100, deadline=None)
@given(st.lists(timelines(), min_size=1, max_size=4), st.integers(0, 400),
       st.integers(1, 30))
def test_the_budget_is_spent_exactly_without_overlaps(videos, budget, window):
    events = [event(f"v{i}", segs) for i, segs in enumerate(videos)]
    fps = {e.video_id: 1.0 for e in events}
    picks = select(events, budget, fps, window_s=window)
    total = sum(segs[-1][1] for segs in videos)
    assert frames(picks) == min(budget, total)
    ends = {e.video_id: e.segments[-1].end_frame for e in events}
    taken: dict[str, set[int]] = {}
    for p in picks:
        assert 0 <= p.start_frame < p.end_frame <= ends[p.video_id]
        mine = set(range(p.start_frame, p.end_frame))
        assert not mine & taken.get(p.video_id, set())
        taken.setdefault(p.video_id, set()).update(mine)


def test_budget_in_seconds_follows_each_videos_frame_rate():
    events = [two_phases("a", 0.5), two_phases("b", 0.5)]
    picks = select(events, 4.0, {"a": 25.0, "b": 10.0}, window_s=2.0)
    assert sum(p.seconds({"a": 25.0, "b": 10.0}[p.video_id]) for p in picks) == pytest.approx(4)
    assert {p.video_id: p.end_frame - p.start_frame for p in picks} == {"a": 50, "b": 20}


def test_a_transition_comes_before_an_equally_uncertain_phase_and_keeps_its_middle():
    picks = select([two_phases("v", 0.6)], 10, {"v": 1.0}, window_s=20)
    assert [(p.kind, p.start_frame, p.end_frame) for p in picks] == [("transition", 95, 105)]
    assert picks[0].key == LABELS[:2]


def test_without_the_transition_weight_the_least_confident_frames_come_first():
    segs = [(0, 100, LABELS[0], 0.9), (100, 200, LABELS[1], 0.2), (200, 300, LABELS[2], 0.6)]
    picks = select([event("v", segs)], 10, {"v": 1.0}, window_s=10, transition_weight=0)
    assert picks[0].kind == "phase" and 100 <= picks[0].start_frame < picks[0].end_frame <= 200
    assert picks[0].key == (LABELS[1],)


def test_picks_spread_over_videos():
    # a is the less confident video; each pick in it discounts its other windows
    events = [two_phases("a", 0.4, length=110), two_phases("b", 0.5, length=110)]
    fps = {"a": 1.0, "b": 1.0}  # every window is 20 frames
    flat = {"window_s": 20, "transition_weight": 0, "repeat_decay": 1.0}
    assert [p.video_id for p in select(events, 40, fps, **flat)] == ["a", "b"]
    assert [p.video_id for p in select(events, 40, fps, **flat, video_decay=1.0)] == ["a", "a"]


def test_a_transition_seen_in_one_video_gives_way_to_another_kind_of_transition():
    same = [two_phases(f"v{i}", 0.5) for i in range(3)]  # CalotTriangle... after Preparation
    other = two_phases("w", 0.7, labels=LABELS[2:])  # more confident, but another transition
    fps = {e.video_id: 1.0 for e in [*same, other]}
    picks = select([*same, other], 40, fps, window_s=20)
    assert [p.video_id for p in picks] == ["v0", "w"]
    # without the discount for repeats, the more uncertain kind is taken again
    picks = select([*same, other], 40, fps, window_s=20, repeat_decay=1.0, video_decay=1.0)
    assert [p.video_id for p in picks] == ["v0", "v1"]


def test_a_flickering_run_becomes_one_transition_window():
    segs = [(0, 100, LABELS[0], 0.9), (100, 103, LABELS[1], 0.4), (103, 106, LABELS[0], 0.4),
            (106, 200, LABELS[1], 0.9)]
    ws = candidates(event("v", segs), 20)
    flicker = [w for w in ws if w.kind == "transition"]
    assert [(w.start_frame, w.end_frame, w.key) for w in flicker] == [(90, 116, LABELS[:2])]


def test_the_order_of_the_events_does_not_change_the_picks():
    events = [two_phases("a", 0.4), two_phases("b", 0.5, labels=LABELS[1:3]),
              two_phases("c", 0.3, labels=LABELS[2:])]
    fps = {e.video_id: 1.0 for e in events}
    assert select(events, 130, fps, window_s=15) == select(events[::-1], 130, fps, window_s=15)


def test_nothing_to_spend_picks_nothing():
    assert select([two_phases("v", 0.1)], 0, {"v": 1.0}) == []
    assert select([], 100, {}) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget_s": -1}, "budget_s"),
    ({"fps": {}}, "no frame rate for video 'v'"),
    ({"window_s": 0}, "window_s"),
    ({"repeat_decay": 0}, "repeat_decay"),
])
def test_bad_arguments_say_which(kwargs, message):
    args = {"budget_s": 10, "fps": {"v": 1.0}} | kwargs
    with pytest.raises(ValueError, match=message):
        select([two_phases("v", 0.5)], args.pop("budget_s"), args.pop("fps"), **args)


def test_one_event_per_video():
    with pytest.raises(ValueError, match="video 'v' has more than one inference event"):
        select([two_phases("v", 0.5), two_phases("v", 0.4)], 10, {"v": 1.0})
