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
    # every boundary is a true phase boundary moved by at most two seconds (or the video's
    # end); a confident segment names the phase that ends there, a doubtful one (confidence
    # in [0.3, 0.55]) confuses it with an adjacent phase
    jitter = 2 * v.fps
    for s in segs:
        ending = [t["label"] for t in v.segments if abs(t["end_frame"] - s.end_frame) <= jitter]
        assert ending, f"segment end {s.end_frame} is no true boundary moved by <= 2 s"
        if s.confidence >= 0.8:
            assert s.confidence <= 0.99 and s.label in ending
        else:
            assert 0.3 <= s.confidence <= 0.55
            assert any(abs(CHOLEC80_PHASES.index(s.label) - CHOLEC80_PHASES.index(t)) <= 1
                       for t in ending)


def test_model_output_is_mostly_right(tmp_path: Path) -> None:
    """About ``error_rate`` (0.25) of the phases come out doubtful, across seeds."""
    v = generate_video(tmp_path / "v.mp4", seed=5, duration_s=45, width=64, height=64)
    confidences = [s["confidence"] for seed in range(200) for s in simulation.model_output(
        v, "cholecystectomy", CHOLEC80_PHASES, ("m", 3), NOW, seed)["segments"]]
    assert len(confidences) >= 200 * 3
    doubtful = sum(c < 0.6 for c in confidences) / len(confidences)
    assert 0.2 < doubtful < 0.3


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
