"""Privacy fails closed, end to end on the real broker and registry: a video ingested while no
out-of-body detector is in production gets no people media, no feedback task and no reel;
once a detector is promoted and has screened it, it does, with every out-of-body frame black
(decoded pixel by pixel); a newer detector holds it again until it has screened it too."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from surgflow.config import get_settings
from surgflow.data.media import prepare_for_people
from surgflow.data.privacy import PRIVACY, PRIVACY_MODEL, PrivacyHold
from surgflow.data.ranges import contains
from surgflow.data.registry import VideoRegistry
from surgflow.feedback.client import Publisher
from surgflow.registry import ModelRegistry
from surgflow.serving.screening import privacy_policy
from tests.cli_helpers import run_cli
from tests.feedback_helpers import inference_event, video_event
from tests.fixtures.privacy import oob_videos
from tests.serving_helpers import promote, read_topic, register_bundle

BLACK = 2  # the brightest pixel of a black frame after H.264 (exactly 0 in practice)


def _black_frames(path: str) -> np.ndarray:
    with av.open(path) as f:
        return np.array([int(fr.to_ndarray(format="rgb24").max()) <= BLACK
                         for fr in f.decode(video=0)])


def _feedback_tasks(kafka, expect: int) -> list[dict]:
    records = read_topic(kafka.bootstrap, get_settings().topic("feedback-tasks"),
                         expect=expect, timeout_s=20)
    return [json.loads(r.value) for r in records]


def _written(kafka, topic: str) -> int:
    """The sum of ``topic``'s end offsets: 0 exactly when nothing was ever written to it."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()


@pytest.mark.integration
def test_a_video_reaches_people_only_once_the_production_detector_cleared_it(
        kafka, detector, tiny_chain_bundle, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SURGFLOW_PRIVACY_SCREENING", "required")
    settings = get_settings()
    held = oob_videos(tmp_path / "held", {"test": 2}, seed=11, tag="held", duration_s=30,
                      size=96)
    ids = sorted(v.video_id for v in held)
    promote(settings, register_bundle(settings, tiny_chain_bundle.bundle_dir))
    with Publisher.from_settings(settings) as pub:
        for v in held:
            pub.video(video_event(v))
            pub.inference(inference_event(v, f"inf-{v.video_id}", 1,
                                          confidences=[0.3] * len(v.segments)))
        pub.flush()
    first = run_cli("feedback", "run", "--once", json=True).data
    assert first["tasks_created"] > 0
    # no detector in production: the tasks are recorded and held off the topic...
    assert _written(kafka, settings.topic("feedback-tasks")) == 0
    held_for = run_cli("data", "quarantine", "--reason", "privacy", json=True).data
    assert sorted(q["video_id"] for q in held_for) == ids
    assert all("no out-of-body detector is in production" in q["reason"] for q in held_for)
    # ...and no medium for people is made: no proxy, no reel
    registry = VideoRegistry(settings.home, settings.resolved_video_roots())
    with pytest.raises(PrivacyHold, match="held for privacy"):
        prepare_for_people(settings.home, registry.get(ids[0]), privacy_policy(settings))
    assert not list((settings.home / "proxies").rglob("*.mp4"))
    reel = run_cli("highlights", ids[0], "--out", str(tmp_path / "reel.mp4"), json=True,
                   check=False)
    assert reel.returncode == 2 and "held for privacy" in reel.stderr
    assert not (tmp_path / "reel.mp4").exists()
    nothing = run_cli("privacy", "screen", json=True).data
    assert (nothing["detector"], nothing["held"], nothing["screened"]) == (None, 2, [])

    # the detector reaches production and screens every video
    version = register_bundle(settings, detector.bundle_dir, recipe_name="privacy-tiny",
                              procedure=PRIVACY, recipe=detector.recipe.model_dump(mode="json"))
    ModelRegistry(settings).promote(PRIVACY_MODEL, version, force=True,
                                    reason="privacy test", by="test")
    screened = run_cli("privacy", "screen", json=True).data
    assert (screened["detector"], sorted(screened["screened"]), screened["failed"]) == (
        f"{PRIVACY_MODEL}@{version}", ids, [])
    assert screened["out_of_body_s"] > 0
    assert run_cli("privacy", "screen", json=True).data["already_screened"] == 2
    assert run_cli("data", "quarantine", "--reason", "privacy", json=True).data == []

    # the next feedback run sends the held tasks
    run_cli("feedback", "run", "--once", json=True)
    sent = _feedback_tasks(kafka, first["tasks_created"])
    assert len(sent) == first["tasks_created"] and {t["video_id"] for t in sent} == set(ids)

    # people media: every truly out-of-body frame is black, decoded pixel by pixel
    policy = privacy_policy(settings)
    out_frames = lost = in_frames = 0
    for v in held:
        media = prepare_for_people(settings.home, registry.get(v.video_id), policy)
        black, truth = _black_frames(media.path), v.out_of_body()
        assert len(black) == v.num_frames
        missed = np.flatnonzero(truth & ~black)
        assert missed.size == 0, f"{v.video_id}: out-of-body frames shown: {missed[:10]}"
        out_frames += int(truth.sum())
        in_frames += int((~truth).sum())
        lost += int((~truth & black).sum())
        shown = run_cli("privacy", "show", v.video_id, json=True).data
        assert shown["cleared"] and shown["blackout_s"] >= shown["out_of_body_s"] > 0
    print(f"held-out videos: {out_frames} out-of-body frames, all black; "
          f"{lost / in_frames:.1%} of {in_frames} in-body frames blacked out with the margin")
    out = run_cli("highlights", ids[0], "--out", str(tmp_path / "reel.mp4"), json=True).data
    assert "screened by" in out["privacy"] and (tmp_path / "reel.mp4").stat().st_size > 0
    shown = run_cli("privacy", "show", ids[0], json=True).data
    blackout = tuple(tuple(r) for r in shown["blackout"])
    assert not any(contains(blackout, m["frame"]) for m in out["key_moments"])

    # a newer detector in production holds the videos again until it has screened them
    newer = register_bundle(settings, detector.bundle_dir, recipe_name="privacy-tiny-2",
                            procedure=PRIVACY, recipe=detector.recipe.model_dump(mode="json"))
    ModelRegistry(settings).promote(PRIVACY_MODEL, newer, force=True, reason="newer",
                                    by="test")
    again = run_cli("data", "quarantine", "--reason", "privacy", json=True).data
    assert sorted(q["video_id"] for q in again) == ids
    assert all(f"screened before by {PRIVACY_MODEL}@{version} only" in q["reason"]
               for q in again)
    assert sorted(run_cli("privacy", "screen", json=True).data["screened"]) == ids
    assert run_cli("data", "quarantine", "--reason", "privacy", json=True).data == []


@pytest.mark.integration
def test_the_detector_is_gated_on_its_own_field_suite_with_the_privacy_checks(
        surgflow_home: Path, detector, tmp_path: Path) -> None:
    from surgflow.data.pins import pin
    from surgflow.evaluation.gate import gate_version
    from tests.dataset_helpers import import_labelled

    field = oob_videos(tmp_path / "field", {"test": 3}, seed=13, tag="field", duration_s=40)
    assert import_labelled(surgflow_home, [tmp_path], [v.path for v in field],
                           "cholecystectomy", "hospital-a", track=PRIVACY).version == 1
    pin(surgflow_home, PRIVACY, 1)
    settings = get_settings()
    recipe = detector.recipe.model_dump(mode="json")
    good = register_bundle(settings, detector.bundle_dir, recipe_name="privacy-tiny",
                           procedure=PRIVACY, recipe=recipe)
    seal = gate_version(ModelRegistry(settings), PRIVACY_MODEL, good)
    checks = {c["name"]: c for c in seal["checks"]}
    assert seal["field_suite"] == "privacy@1"
    assert {"privacy.recall", "privacy.in_body_lost", "onnx.parity"} <= set(checks)
    assert checks["privacy.recall"]["passed"], checks["privacy.recall"]["reason"]
    assert checks["privacy.recall"]["threshold"] == 0.999
    assert seal["verdict"] == "approved", "\n".join(c["reason"] for c in seal["checks"])
    assert ModelRegistry(settings).pointers(PRIVACY_MODEL).get("approved") == good
    # the same chain held to the frames themselves, without redaction's margin, misses the
    # boundary seconds it predicts once a second: rejected, and the seal says why
    strict = register_bundle(settings, detector.bundle_dir, recipe_name="privacy-strict",
                             procedure=PRIVACY, recipe=recipe | {"gate": recipe["gate"] | {
                                 "privacy": {"min_recall": 0.999, "margin_s": 0.0}}})
    seal = gate_version(ModelRegistry(settings), PRIVACY_MODEL, strict)
    recall = next(c for c in seal["checks"] if c["name"] == "privacy.recall")
    assert seal["verdict"] == "rejected" and not recall["passed"]
    assert "missed" in recall["reason"] and "0 s margin" in recall["reason"]


@pytest.mark.integration
def test_the_service_reports_out_of_body_ranges_and_no_moment_inside_them(
        surgflow_home: Path, detector, tiny_chain_bundle, tmp_path: Path) -> None:
    from surgflow.data.ranges import runs
    from surgflow.serving.analysis import analyse
    from surgflow.serving.pool import ModelPool

    settings = get_settings()
    (v,) = oob_videos(tmp_path / "svc", {"test": 1}, seed=17, tag="svc", duration_s=40)
    promote(settings, register_bundle(settings, tiny_chain_bundle.bundle_dir))
    pool = ModelPool(settings)
    pool.refresh()
    without = analyse(pool, settings, video_id=v.video_id, uri=v.path.as_uri(),
                      procedure="cholecystectomy").response
    assert without["out_of_body"] is None  # no detector served: unknown, not "none found"
    version = register_bundle(settings, detector.bundle_dir, recipe_name="privacy-tiny",
                              procedure=PRIVACY, recipe=detector.recipe.model_dump(mode="json"))
    ModelRegistry(settings).promote(PRIVACY_MODEL, version, force=True, reason="test",
                                    by="test")
    assert f"{PRIVACY}@{version}" in pool.refresh()
    got = analyse(pool, settings, video_id=v.video_id, uri=v.path.as_uri(),
                  procedure="cholecystectomy").response
    oob = got["out_of_body"]
    assert oob["model"] == {"name": PRIVACY_MODEL, "version": version}
    found = np.zeros(v.num_frames, dtype=bool)
    for s in oob["segments"]:
        found[s["start_frame"]:s["end_frame"]] = True
    truth = v.out_of_body()
    # every true range is found to within the chain's one-second resolution
    for s, e in runs(truth):
        assert found[max(s, 0):e].mean() > 0.5, (s, e, oob["segments"])
    # the phase answer is the contract's; moments inside blacked-out frames are left out
    assert got["segments"] == without["segments"]
    assert len(got["key_moments"]) <= len(without["key_moments"])
    from surgflow.data.privacy import blackout_ranges

    black = blackout_ranges([(s["start_frame"], s["end_frame"]) for s in oob["segments"]],
                            v.num_frames, v.fps)
    assert not any(contains(black, m["frame"]) for m in got["key_moments"])


@pytest.mark.integration
def test_a_video_the_detector_cannot_read_stays_held_with_the_reason(
        surgflow_home: Path, detector, tmp_path: Path, monkeypatch) -> None:
    from surgflow.serving.screening import screen

    monkeypatch.setenv("SURGFLOW_PRIVACY_SCREENING", "required")
    settings = get_settings()
    good, bad = oob_videos(tmp_path / "v", {"test": 2}, seed=19, tag="rd", duration_s=16)
    registry = VideoRegistry(settings.home, settings.resolved_video_roots())
    for v in (good, bad):
        registry.register(v.path.as_uri(), "cholecystectomy", "hospital-a")
    version = register_bundle(settings, detector.bundle_dir, recipe_name="privacy-tiny",
                              procedure=PRIVACY, recipe=detector.recipe.model_dump(mode="json"))
    ModelRegistry(settings).promote(PRIVACY_MODEL, version, force=True, reason="test",
                                    by="test")
    data = bad.path.read_bytes()
    bad.path.write_bytes(data[: len(data) // 3])  # the file went bad after registration
    report = screen(settings)
    assert report.screened == [good.video_id]
    assert [f["video_id"] for f in report.failed] == [bad.video_id]
    held = run_cli("data", "quarantine", "--reason", "privacy", json=True).data
    assert [q["video_id"] for q in held] == [bad.video_id]
    assert "screening by" in held[0]["reason"] and "failed" in held[0]["reason"]
    with pytest.raises(PrivacyHold, match="failed"):
        prepare_for_people(settings.home, registry.get(bad.video_id), privacy_policy(settings))
    # put back, it is screened on the next pass and cleared
    bad.path.write_bytes(data)
    assert screen(settings).screened == [bad.video_id]
    assert run_cli("data", "quarantine", "--reason", "privacy", json=True).data == []
