"""The privacy track's pure parts and its rules: blackout ranges, the gate's privacy figures and
checks, routing privacy labels to their own track, and what clears a video for people."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgflow.data.privacy import (
    IN_BODY,
    OUT_OF_BODY,
    PRIVACY,
    PrivacyHold,
    PrivacyPolicy,
    Screening,
    ScreeningLedger,
    blackout_ranges,
    clearance,
    margin_frames,
    screening_event_id,
)
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.data.versions import DatasetStore
from surgflow.errors import BadInput
from surgflow.evaluation.checks import gate_checks
from surgflow.evaluation.metrics import LabelledVideo, evaluate
from surgflow.evaluation.privacy import privacy_scores
from surgflow.evaluation.thresholds import parse_gate
from surgflow.feedback.merge import _by_dataset
from surgflow.feedback.schemas import AnnotationEvent
from tests.view_helpers import event, register

ranges = st.lists(st.tuples(st.integers(0, 120), st.integers(0, 40)).map(
    lambda t: (t[0], t[0] + t[1])), max_size=6)


@given(ranges, st.integers(1, 150), st.sampled_from([1.0, 2.0, 10.0, 25.0, 29.97]),
       st.sampled_from([0.0, 0.5, 1.0]))
def test_blackout_ranges_are_every_frame_within_the_margin_of_a_range(out, n, fps, margin_s):
    pad = margin_frames(fps, margin_s)
    want = np.zeros(n, dtype=bool)
    for s, e in out:
        for f in range(n):
            if e > s and s - pad <= f < e + pad:
                want[f] = True
    got = blackout_ranges(out, n, fps, margin_s)
    mask = np.zeros(n, dtype=bool)
    for s, e in got:
        mask[s:e] = True
    assert (mask == want).all()
    # sorted, disjoint, not touching: one range per black stretch
    assert all(a[1] < b[0] for a, b in itertools.pairwise(got))
    assert all(0 <= s < e <= n for s, e in got)


def test_the_margin_is_a_second_of_frames_rounded_up():
    assert margin_frames(25.0) == 25 and margin_frames(29.97) == 30 and margin_frames(2.0) == 2
    assert blackout_ranges([(100, 110)], 1000, 25.0) == ((75, 135),)
    assert blackout_ranges([(0, 5), (40, 50)], 60, 10.0) == ((0, 15), (30, 60))


def _video(truth: list[int], pred: list[int], fps: float = 10.0) -> LabelledVideo:
    return LabelledVideo("v", "hospital-a", fps, np.array(truth), np.array(pred))


def test_privacy_scores_count_after_the_margin_and_ignore_unlabelled_frames():
    # 40 frames at 10 fps: truly out of the body 10..20; the detector finds 12..18 only
    truth = [0] * 10 + [1] * 10 + [0] * 20
    pred = [0] * 12 + [1] * 6 + [0] * 22
    s = privacy_scores([_video(truth, pred)], positive=1, margin_s=1.0)
    # black: 2..28 -> every out-of-body frame, and 16 in-body frames of 30 with the margin;
    # the detector itself calls none of the in-body frames out of the body
    assert (s["recall"], s["missed_frames"]) == (1.0, 0)
    assert s["blacked_out_frames"] == 16 and s["blacked_out"] == pytest.approx(16 / 30)
    assert s["lost_frames"] == 0
    # 5..25 called out: 10 in-body frames, all within a second (10 frames) of the truth, are
    # the chain's sampling; 30..35 is 10 frames past it: lost
    wide = privacy_scores([_video(truth, [0] * 5 + [1] * 20 + [0] * 5 + [1] * 5 + [0] * 5)],
                          positive=1)
    assert wide["lost_raw_frames"] == 15 and wide["lost_frames"] == 5
    assert wide["lost"] == pytest.approx(5 / 30)
    no_margin = privacy_scores([_video(truth, pred)], positive=1, margin_s=0.0)
    assert no_margin["missed_frames"] == 4 and no_margin["recall"] == pytest.approx(0.6)
    unlabelled = privacy_scores([_video([-1] * 40, pred)], positive=1)
    assert unlabelled["recall"] is None and unlabelled["lost"] is None


def test_the_gate_checks_recall_and_loss_and_says_why():
    labels = [IN_BODY, OUT_OF_BODY]
    spec = parse_gate({"min_macro_f1": 0.5, "bootstrap": None,
                       "privacy": {"min_recall": 0.999, "max_lost": 0.02}}, "recipe")
    truth = [0] * 200 + [1] * 50 + [0] * 200
    good = _video(truth, truth)
    late = _video(truth, [0] * 215 + [1] * 35 + [0] * 200)  # misses 15 frames (1.5 s)
    for video, passed in ((good, {"privacy.recall": True, "privacy.in_body_lost": True}),
                          (late, {"privacy.recall": False, "privacy.in_body_lost": True})):
        scores = privacy_scores([video], 1, spec.privacy.margin_s)
        checks = gate_checks(spec, evaluate([video], labels), onnx={"passed": True,
                             "max_abs_diff": 0.0, "top1_agreement": 1.0}, privacy=scores)
        got = {c["name"]: c for c in checks if c["name"].startswith("privacy.")}
        assert {k: c["passed"] for k, c in got.items()} == passed
    assert "5 missed" in got["privacy.recall"]["reason"]
    assert "1 s margin" in got["privacy.recall"]["reason"]


def test_a_bad_privacy_gate_block_names_the_field():
    from surgflow.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gate\.privacy\.min_recall"):
        parse_gate({"privacy": {"min_recall": 2}}, "recipe x")
    with pytest.raises(ConfigError,
                       match="allowed: label, margin_s, max_lost, min_recall, tolerance_s"):
        parse_gate({"privacy": {"recal": 1}}, "recipe x")


def test_an_annotation_splits_into_its_phases_and_its_privacy_track():
    msg = {"schema": "surgflow.annotation/v1", "event_id": "a1", "video_id": "v",
           "annotator": "x", "produced_at": "2026-11-22T09:30:00Z",
           "segments": [{"start_frame": 0, "end_frame": 10, "label": OUT_OF_BODY},
                        {"start_frame": 10, "end_frame": 50, "label": "Preparation"},
                        {"start_frame": 10, "end_frame": 50, "label": IN_BODY}]}
    parts = _by_dataset(AnnotationEvent.model_validate(msg), "cholecystectomy")
    assert sorted(parts) == ["cholecystectomy", PRIVACY]
    assert [s.label for s in parts[PRIVACY].segments] == [OUT_OF_BODY, IN_BODY]
    assert [s.label for s in parts["cholecystectomy"].segments] == ["Preparation"]
    only_phases = _by_dataset(AnnotationEvent.model_validate(
        msg | {"segments": msg["segments"][1:2]}), "cholecystectomy")
    assert list(only_phases) == ["cholecystectomy"]


def test_privacy_labels_are_reserved_and_privacy_is_no_procedure_of_videos(
        surgflow_home: Path, synthetic_corpus):
    catalog = ProcedureCatalog(surgflow_home)
    assert catalog.get(PRIVACY).labels == (IN_BODY, OUT_OF_BODY)
    with pytest.raises(BadInput, match="belong to the privacy track"):
        catalog.add("appendectomy", ["Start", OUT_OF_BODY])
    with pytest.raises(BadInput, match="label track every video carries"):
        register(surgflow_home, synthetic_corpus[:1], procedure=PRIVACY)


def test_clearance_fails_closed_and_blacks_out_what_the_track_resolves(
        surgflow_home: Path, synthetic_corpus):
    (record,) = register(surgflow_home, synthetic_corpus[:1])
    detector = "privacy-outofbody@1"
    # nothing in production, not screened, screening failed: held, each with its reason
    for policy, why in ((PrivacyPolicy(), "no out-of-body detector is in production"),
                        (PrivacyPolicy(detector=detector), "not screened yet")):
        c = clearance(surgflow_home, record, policy)
        assert not c.cleared and why in c.reason
        with pytest.raises(PrivacyHold, match=record.video_id):
            c.require()
    ledger = ScreeningLedger(surgflow_home)
    at = datetime(2026, 12, 7, tzinfo=UTC)
    ledger.record(Screening(video_id=record.video_id, sha256=record.sha256, detector=detector,
                            status="failed", at=at, reason="VideoError: truncated"))
    c = clearance(surgflow_home, record, PrivacyPolicy(detector=detector))
    assert not c.cleared and "failed: VideoError: truncated" in c.reason
    # screened: the model's range, then a person's correction of it, decide the blackout
    n = record.num_frames
    model = event(record, [{"start_frame": 0, "end_frame": 50, "label": OUT_OF_BODY},
                           {"start_frame": 50, "end_frame": n, "label": IN_BODY}],
                  provenance="model", confidence=0.9)
    store = DatasetStore(surgflow_home)
    store.commit(PRIVACY, videos=[record], events=[model], offsets={})
    ledger.record(Screening(video_id=record.video_id, sha256=record.sha256, detector=detector,
                            status="screened", at=at, event_id=screening_event_id(
                                record.sha256, detector), dataset_version=1))
    c = clearance(surgflow_home, record, PrivacyPolicy(detector=detector)).require()
    pad = margin_frames(record.fps)
    assert c.out_of_body == ((0, 50),) and c.blackout == ((0, 50 + pad),)
    human = event(record, [{"start_frame": 0, "end_frame": 20, "label": IN_BODY},
                           {"start_frame": 200, "end_frame": 210, "label": OUT_OF_BODY}], n=1)
    store.commit(PRIVACY, videos=[], events=[human], offsets={})
    c = clearance(surgflow_home, record, PrivacyPolicy(detector=detector))
    assert c.out_of_body == ((20, 50), (200, 210))
    # a newer detector in production: held again until it screened the video
    c = clearance(surgflow_home, record, PrivacyPolicy(detector="privacy-outofbody@2"))
    assert not c.cleared and "screened before by privacy-outofbody@1 only" in c.reason
    off = clearance(surgflow_home, record, PrivacyPolicy(required=False))
    assert off.cleared and off.blackout == ()


def test_phase_views_centre_no_clip_on_an_out_of_body_frame(surgflow_home: Path,
                                                             synthetic_corpus):
    from surgflow.data.clip_sampling import ClipSpec, centre_frame, frame_step
    from surgflow.data.views import ViewSpec, resolve_view

    records = register(surgflow_home, synthetic_corpus[:2])
    store = DatasetStore(surgflow_home)
    clip = ClipSpec(frames=1, stride=1, fps=5, size=32)
    # the privacy track first, then phase labels (model labels over every frame, as a
    # production model's output covers the video) written after it
    out = {r.video_id: (r.num_frames // 4, r.num_frames // 2) for r in records}
    track = [event(r, [{"start_frame": 0, "end_frame": out[r.video_id][0], "label": IN_BODY},
                       {"start_frame": out[r.video_id][0], "end_frame": out[r.video_id][1],
                        "label": OUT_OF_BODY},
                       {"start_frame": out[r.video_id][1], "end_frame": r.num_frames,
                        "label": IN_BODY}], n=i) for i, r in enumerate(records)]
    store.commit(PRIVACY, videos=records, events=track, offsets={})
    phases = [event(r, [{"start_frame": 0, "end_frame": r.num_frames,
                         "label": "Preparation"}], provenance="model", confidence=0.9, n=i)
              for i, r in enumerate(records)]
    store.commit("cholecystectomy", videos=records, events=phases, offsets={})

    def centres(spec: ViewSpec) -> dict[str, set[int]]:
        view = resolve_view(spec, surgflow_home)
        got: dict[str, set[int]] = {}
        for vi, start in zip(view.video, view.start, strict=True):
            v = view.videos[vi]
            got.setdefault(v.video_id, set()).add(
                centre_frame(int(start), clip, frame_step(v.fps, clip.fps)))
        return got

    spec = ViewSpec(sources=["cholecystectomy@1"], clip=clip, min_confidence=0.5)
    excluded, kept = centres(spec), centres(spec.model_copy(update={"out_of_body": "keep"}))
    for r in records:
        lo, hi = out[r.video_id]
        inside = {c for c in kept[r.video_id] if lo <= c < hi}
        assert inside, "the test must put clips inside the out-of-body range"
        assert excluded[r.video_id] == kept[r.video_id] - inside
    # a privacy version written after the phase version does not change its view
    later = [event(r, [{"start_frame": 0, "end_frame": r.num_frames, "label": IN_BODY}],
                   n=10 + i) for i, r in enumerate(records)]
    store.commit(PRIVACY, videos=[], events=later, offsets={})
    assert centres(spec) == excluded
