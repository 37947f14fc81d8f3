"""Simulated producers: their messages are valid wire v1 and consistent with the ground truth."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from surgflow.data.synthetic import generate_video
from surgflow.data.taxonomy import CHOLEC80_PHASES
from surgflow.feedback import simulation
from surgflow.feedback.schemas import validate

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("seed", range(12))
def test_model_output_covers_the_video_and_is_valid(tmp_path: Path, seed: int) -> None:
    v = generate_video(tmp_path / "v.mp4", seed=seed, duration_s=(4, 20, 45)[seed % 3],
                       width=64, height=64)
    msg = simulation.model_output(v, "cholecystectomy", CHOLEC80_PHASES, ("m", 3), NOW, seed)
    event = validate("inference", msg)
    segs = event.segments
    assert segs[0].start_frame == 0 and segs[-1].end_frame == v.num_frames
    assert all(a.end_frame == b.start_frame for a, b in itertools.pairwise(segs))
    assert all(s.end_frame - s.start_frame >= v.fps // 2 for s in segs)
    assert all(s.label in CHOLEC80_PHASES and 0 <= s.confidence <= 1 for s in segs)
    low = [s for s in segs if s.confidence < 0.6]
    truth = {f: s["label"] for s in v.segments for f in range(s["start_frame"], s["end_frame"])}
    for s in segs:
        if s.confidence >= 0.8:
            mid = (s.start_frame + s.end_frame) // 2
            assert truth[mid] == s.label or abs(mid - s.start_frame) <= 2 * v.fps, (
                "confident segments are right away from the jittered boundaries")
    assert len(low) < len(segs) or len(segs) == 1


def test_annotation_is_the_ground_truth_of_its_range(tmp_path: Path) -> None:
    v = generate_video(tmp_path / "v.mp4", seed=3, duration_s=20, width=64, height=64)
    full = validate("annotations", simulation.annotation(v, "a1", NOW))
    assert [(s.start_frame, s.end_frame, s.label) for s in full.segments] == [
        (s["start_frame"], s["end_frame"], s["label"]) for s in v.segments]
    part = validate("annotations", simulation.annotation(v, "a1", NOW, 100, 300, task_id="t-1"))
    assert part.task_id == "t-1" and part.segments[0].start_frame == 100
    assert part.segments[-1].end_frame == 300
    assert part.event_id != full.event_id
    video = validate("videos", simulation.video_event(v, "cholecystectomy", NOW))
    assert video.uri.startswith("file://") and video.source == "hospital-a"
