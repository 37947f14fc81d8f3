"""Phase metrics against hand computations (standard and relaxed, Funke et al. averaging)."""

from __future__ import annotations

import numpy as np
import pytest

from surgflow.evaluation.metrics import (
    METRICS,
    LabelledVideo,
    evaluate,
    paired_bootstrap,
    phase_scores,
    relax,
)

LABELS = ["A", "B", "C", "D"]


def video(vid, truth, pred, source="hospital-a", fps=1.0):
    return LabelledVideo(vid, source, fps, np.array(truth), np.array(pred))


def test_one_video_by_hand():
    s = phase_scores(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 2]), 3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    # phase 2 is predicted but absent from the truth: skipped, not scored as zero
    assert set(s["phases"]) == {0, 1}
    assert s["phases"][0] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8,
                                            "jaccard": 2 / 3})
    assert s["phases"][1] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                            "jaccard": 0.5})


def test_phase_present_but_never_predicted_scores_zero():
    s = phase_scores(np.array([0, 0, 1]), np.array([0, 0, 0]), 2)
    assert s["phases"][1] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "jaccard": 0.0}


def test_suite_averages_per_phase_over_videos_then_over_phases():
    v1 = video("v1", [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2], "hospital-a")
    # frame 2 is unscored (-1): its prediction never counts
    v2 = video("v2", [2, 2, -1, 0], [2, 0, 1, 0], "hospital-b")
    m = evaluate([v1, v2], LABELS[:3], window_s=0)
    s = m["summary"]
    # per phase F1: A (0.8 + 2/3)/2, B 2/3 (v1 only), C 2/3 (v2 only)
    assert m["per_phase"]["standard"]["A"]["f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["per_phase"]["standard"]["B"]["videos"] == 1
    assert s["macro_f1"] == pytest.approx(((0.8 + 2 / 3) / 2 + 2 / 3 + 2 / 3) / 3)
    assert s["macro_precision"] == pytest.approx(((1 + 0.5) / 2 + 2 / 3 + 1) / 3)
    assert s["macro_recall"] == pytest.approx(((2 / 3 + 1) / 2 + 2 / 3 + 0.5) / 3)
    assert s["macro_jaccard"] == pytest.approx(((2 / 3 + 0.5) / 2 + 0.5 + 0.5) / 3)
    assert s["accuracy"] == pytest.approx((4 / 6 + 2 / 3) / 2)
    # window 0: relaxed equals standard
    assert s["relaxed_macro_f1"] == pytest.approx(s["macro_f1"])
    assert set(s) == set(METRICS)
    # per source: each source averages only its own videos
    assert m["per_source"]["hospital-b"]["macro_f1"] == pytest.approx(2 / 3)
    assert m["per_source"]["hospital-a"]["accuracy"] == pytest.approx(4 / 6)
    assert m["per_video"][1]["frames"] == 3
    assert np.array(m["confusion"]).sum() == 9
    assert m["confusion"][2] == [1, 0, 1]  # truth C: one right, one predicted A


TRUTH12 = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
PRED12 = [0, 0, 1, 1, 1, 2, 0, 2, 2, 1, 0, 2]


def test_relaxed_forgives_only_the_two_phases_of_a_nearby_transition():
    # W = 2 frames; transitions 0->1 at frame 4 (window [2, 6)) and 1->2 at 8 (window [6, 10))
    r = relax(np.array(TRUTH12), np.array(PRED12), 2)
    # frames 2, 3 (A as B), 7 (B as C), 9 (C as B) forgiven; 5 (B as C, next to the A|B
    # transition), 6 (B as A, 2 frames after it) and 10 (C as A) stay errors
    assert r.tolist() == [0, 0, 0, 0, 1, 2, 0, 1, 2, 2, 0, 2]


def test_relaxed_and_standard_figures_side_by_side_by_hand():
    m = evaluate([video("v", TRUTH12, PRED12, fps=2.0)], LABELS[:3], window_s=1.0)  # W = 2
    s = m["summary"]
    assert s["accuracy"] == pytest.approx(5 / 12)
    assert s["relaxed_accuracy"] == pytest.approx(9 / 12)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert s["relaxed_macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0.75) / 3)
    assert m["per_phase"]["relaxed"]["C"]["f1"] == pytest.approx(0.75)


def test_relaxed_adjacency_comes_from_the_video_not_from_phase_indices():
    # D -> A: not neighbours by index, but neighbours in this video
    assert relax(np.array([3, 3, 3, 0, 0, 0]), np.array([3, 3, 0, 3, 0, 0]), 1).tolist() == \
        [3, 3, 3, 0, 0, 0]
    # A -> C with B predicted at the boundary: B is an index neighbour of both, yet not a
    # phase of this transition, so it stays an error
    assert relax(np.array([0, 0, 0, 2, 2, 2]), np.array([0, 0, 1, 2, 2, 2]), 2).tolist() == \
        [0, 0, 1, 2, 2, 2]


def test_relaxed_transition_across_unscored_frames():
    truth, pred = np.array([0, 0, -1, -1, 1, 1]), np.array([1, 1, 1, 0, 0, 1])
    # transition between scored frames 1 and 4: window [1, 5)
    assert relax(truth, pred, 1).tolist() == [1, 0, 1, 0, 1, 1]
    m = evaluate([video("v", truth, pred)], LABELS[:2], window_s=1.0)
    assert m["summary"]["accuracy"] == pytest.approx(1 / 4)
    assert m["summary"]["relaxed_accuracy"] == pytest.approx(3 / 4)


def test_unscored_frames_never_count():
    full = evaluate([video("v", [0, 0, 1, 1], [0, 0, 1, 1])], LABELS[:2])
    masked = evaluate([video("v", [0, 0, 1, 1, -1, -1], [0, 0, 1, 1, 0, 0])], LABELS[:2])
    assert masked["summary"] == full["summary"]
    assert full["summary"]["macro_f1"] == 1.0


def test_paired_bootstrap_is_seeded_and_paired():
    labels = LABELS[:2]
    truth = [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]]
    good = evaluate([video(f"v{i}", t, t) for i, t in enumerate(truth)], labels)["per_video"]
    bad = evaluate([video(f"v{i}", t, [0] * 4) for i, t in enumerate(truth)],
                   labels)["per_video"]
    a = paired_bootstrap(good, bad, labels, "accuracy", resamples=200, seed=7)
    assert a == paired_bootstrap(good, bad, labels, "accuracy", resamples=200, seed=7)
    # accuracy gains per video: 0.5, 0.75, 0.25 -> mean 0.5; the CI stays within their range
    assert a["difference"] == pytest.approx(0.5)
    assert 0.25 <= a["low"] <= 0.5 <= a["high"] <= 0.75
    same = paired_bootstrap(good, good, labels, "macro_f1", resamples=50)
    assert (same["low"], same["high"], same["difference"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        paired_bootstrap(good, bad, labels, "f2")
