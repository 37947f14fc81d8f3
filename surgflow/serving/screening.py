"""Screening: the production out-of-body detector over every registered video.

A video is screened once per detector version: the detector's timeline becomes model labels of
the privacy track (one event per video content and detector, so screening again applies
nothing), committed as a new privacy-track version, and then the screening is recorded
(:class:`surgflow.data.privacy.ScreeningLedger`). A crash between the two screens the video
again, to the same labels. A video the detector cannot decode is recorded as failed, with the
reason: it stays held (privacy fails closed) and is tried again on the next pass.

:func:`screen` is what the ``privacy-screen`` flow, ``surgflow privacy screen`` and the demo
run: when a video is registered, and when a new detector reaches production (every video is
then screened again by it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from surgflow.config import Settings
from surgflow.data.labels import LabelEvent
from surgflow.data.privacy import (
    OUT_OF_BODY,
    PRIVACY,
    PRIVACY_LABELS,
    PRIVACY_MODEL,
    PrivacyPolicy,
    Screening,
    ScreeningLedger,
    hold_reason,
    now,
    screening_event_id,
)
from surgflow.data.registry import VideoRecord, VideoRegistry
from surgflow.data.versions import DatasetStore
from surgflow.errors import BadInput, DecodeError, SurgflowError

log = logging.getLogger(__name__)

#: screenings committed per privacy-track version
BATCH = 16


@dataclass
class ScreenReport:
    """What one pass did (``surgflow privacy screen --json``)."""

    detector: str | None = None
    screened: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    already: int = 0
    held: int = 0
    out_of_body_frames: int = 0
    out_of_body_s: float = 0.0
    versions: list[int] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"detector": self.detector, "screened": list(self.screened),
                "failed": list(self.failed), "already_screened": self.already,
                "held": self.held, "out_of_body_frames": self.out_of_body_frames,
                "out_of_body_s": round(self.out_of_body_s, 3),
                "privacy_versions": list(self.versions)}


def production_detector(models) -> str | None:
    """``NAME@VERSION`` of the out-of-body detector in production, or None."""
    version = models.production(PRIVACY_MODEL)
    return f"{PRIVACY_MODEL}@{version}" if version is not None else None


def privacy_policy(settings: Settings, models=None) -> PrivacyPolicy:
    """What clears a video for people now: the setting and the production detector."""
    if settings.privacy_screening == "off":
        return PrivacyPolicy(required=False)
    if models is None:
        from surgflow.registry import ModelRegistry

        models = ModelRegistry(settings)
    return PrivacyPolicy(detector=production_detector(models))


def privacy_hold(settings: Settings, models=None) -> Callable[[list[str]], dict[str, str]]:
    """The feedback run's hold rule: the videos the production detector has not screened
    successfully, with the reason (it reads the registry's pointer at every call, so a
    promotion releases the held tasks on the next batch after screening)."""
    ledger = ScreeningLedger(settings.home)

    def held(video_ids: list[str]) -> dict[str, str]:
        nonlocal models
        if models is None and settings.privacy_screening != "off":
            from surgflow.registry import ModelRegistry

            models = ModelRegistry(settings)  # once: the pointer itself is read every call
        policy = privacy_policy(settings, models)
        if not policy.required:
            return {}
        out = {}
        for v in video_ids:
            done = ledger.get(v, policy.detector) if policy.detector else None
            why = hold_reason(done, policy.detector)
            if why is not None:
                out[v] = why
        return out

    return held


def screen(settings: Settings, video_ids: Iterable[str] | None = None, *, models=None,
           runner=None, on_video: Callable[[str], None] | None = None) -> ScreenReport:
    """Screen the registered videos (``video_ids``, default all) that the production detector
    has not screened yet. Without a detector in production nothing is screened and every
    unscreened video counts as ``held``."""
    if models is None:
        from surgflow.registry import ModelRegistry

        models = ModelRegistry(settings)
    registry = VideoRegistry(settings.home, settings.resolved_video_roots())
    videos = ([registry.get(v) for v in video_ids] if video_ids is not None
              else registry.list())
    ledger = ScreeningLedger(settings.home)
    policy = privacy_policy(settings, models)
    report = ScreenReport(detector=policy.detector)
    detector = report.detector
    if not policy.required:
        return report
    if detector is None:
        report.held = len(videos)
        return report
    todo = []
    for v in videos:
        done = ledger.get(v.video_id, detector)
        if done is not None and done.status == "screened":
            report.already += 1
        else:
            todo.append(v)
    if not todo:
        return report
    if runner is None:
        from surgflow.serving.pool import load_chain

        runner = load_chain(models, PRIVACY_MODEL, int(detector.rsplit("@", 1)[1]))
    labels = list(runner.spec.labels)
    if sorted(labels) != sorted(PRIVACY_LABELS):
        raise BadInput(f"{detector} predicts {labels}; an out-of-body detector predicts "
                       f"{list(PRIVACY_LABELS)}")
    store = DatasetStore(settings.home)
    for i in range(0, len(todo), BATCH):
        _screen_batch(store, ledger, runner, labels, detector, todo[i:i + BATCH], report,
                      on_video)
    return report


def _screen_batch(store: DatasetStore, ledger: ScreeningLedger, runner, labels: list[str],
                  detector: str, videos: list[VideoRecord], report: ScreenReport,
                  on_video: Callable[[str], None] | None) -> None:
    events: list[LabelEvent] = []
    found: dict[str, int] = {}
    for v in videos:
        try:
            analysis = runner.analyze(v.path)
        except (SurgflowError, DecodeError, OSError) as e:
            reason = f"{type(e).__name__}: {e}"
            log.warning("screening %s with %s failed: %s", v.video_id, detector, reason)
            ledger.record(Screening(video_id=v.video_id, sha256=v.sha256, detector=detector,
                                    status="failed", at=now(), reason=reason))
            report.failed.append({"video_id": v.video_id, "reason": reason})
            continue
        segments = analysis.timeline.segments(labels)
        found[v.video_id] = sum(s["end_frame"] - s["start_frame"] for s in segments
                                if s["label"] == OUT_OF_BODY)
        report.out_of_body_s += found[v.video_id] / v.fps
        events.append(LabelEvent.of_checked(
            screening_event_id(v.sha256, detector), v.video_id, "model", now(), -1, -1,
            ((s["start_frame"], s["end_frame"], s["label"], s["confidence"])
             for s in segments)))
        if on_video is not None:
            on_video(v.video_id)
    if not events:
        return
    screened = [v for v in videos if v.video_id in found]
    result = store.commit(PRIVACY, videos=screened, events=events, offsets={}, checked=True)
    version = result.version or store.latest_version(PRIVACY)
    if result.version is not None:
        report.versions.append(result.version)
    for v in screened:
        ledger.record(Screening(video_id=v.video_id, sha256=v.sha256, detector=detector,
                                status="screened", at=now(), event_id=screening_event_id(
                                    v.sha256, detector), dataset_version=version,
                                out_of_body_frames=found[v.video_id]))
        report.screened.append(v.video_id)
        report.out_of_body_frames += found[v.video_id]
    log.info("screened %d videos with %s: %d out-of-body frames (privacy version %s)",
             len(screened), detector, sum(found.values()), version)
