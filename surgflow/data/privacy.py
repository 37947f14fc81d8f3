"""Patient privacy: the out-of-body label track, blackout ranges, and whether a video may be
shown to a person at all.

An endoscope taken out of the patient films the operating room (faces, boards, clocks). Every
registered video therefore carries a second label track beside its phases: the ``privacy``
dataset, one for all procedures, whose labels are :data:`IN_BODY` and :data:`OUT_OF_BODY`. The
production out-of-body detector (:data:`PRIVACY_MODEL`) screens each video and its ranges are
model labels there; a person's privacy annotation beats the model's, as for phases (SPEC §4).

Privacy fails closed: a video is *cleared* for people only when the detector now in
production screened it successfully; then every frame within :data:`MARGIN_S` of an
out-of-body range is blacked out wherever media leaves (:mod:`surgflow.data.media`). Anything
else (no detector in production, not screened yet, screening failed, screened by an older
detector) holds the video back, with the reason.

:func:`blackout_ranges` is pure; :class:`ScreeningLedger` records each screening once per video
and detector version, under ``SURGFLOW_HOME/privacy``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from surgflow.data import ranges
from surgflow.errors import BadInput

#: the label track (a built-in procedure and its dataset) every registered video joins
PRIVACY = "privacy"
IN_BODY = "InBody"
OUT_OF_BODY = "OutOfBody"
PRIVACY_LABELS = (IN_BODY, OUT_OF_BODY)
#: the registered name of the out-of-body detector chain
PRIVACY_MODEL = "privacy-outofbody"
#: frames this close to an out-of-body range are blacked out too (detector boundaries are
#: a clip apart, and a scope leaving the body is blurred before it is out)
MARGIN_S = 1.0


class PrivacyHold(BadInput):
    """A video may not be shown to a person (yet): the reason says why and what clears it."""


def margin_frames(fps: float, margin_s: float = MARGIN_S) -> int:
    return max(0, math.ceil(margin_s * fps - 1e-9))


def blackout_ranges(out_of_body: Iterable[tuple[int, int]], num_frames: int, fps: float,
                    margin_s: float = MARGIN_S) -> tuple[tuple[int, int], ...]:
    """Half-open frame ranges to black out: each out-of-body range widened by ``margin_s`` on
    both sides, clipped to ``[0, num_frames)``, overlapping or touching ranges merged, sorted."""
    pad = margin_frames(fps, margin_s)
    return ranges.merge((max(0, s - pad), min(num_frames, e + pad))
                        for s, e in out_of_body if e > s)


def frames_in(spans: Iterable[tuple[int, int]]) -> int:
    return sum(e - s for s, e in spans)


class Screening(BaseModel, frozen=True):
    """One screening of one video's content by one detector version."""

    video_id: str
    sha256: str
    detector: str  # NAME@VERSION
    status: Literal["screened", "failed"]
    at: datetime
    reason: str | None = None
    event_id: str | None = None
    #: the privacy dataset version that holds this screening's labels
    dataset_version: int | None = None
    out_of_body_frames: int = 0


class PrivacyPolicy(BaseModel, frozen=True):
    """What clears a video for people: the detector in production (``NAME@VERSION``, None:
    none is), or nothing when screening is off (``SURGFLOW_PRIVACY_SCREENING=off``: the
    videos are de-identified before they reach surgflow)."""

    required: bool = True
    detector: str | None = None


class Clearance(BaseModel, frozen=True):
    """Whether a video may be shown to people, and what to black out if it may."""

    video_id: str
    cleared: bool
    reason: str
    detector: str | None = None
    blackout: tuple[tuple[int, int], ...] = ()
    out_of_body: tuple[tuple[int, int], ...] = ()

    def require(self) -> Clearance:
        if not self.cleared:
            raise PrivacyHold(f"video {self.video_id!r} is held for privacy: {self.reason}")
        return self


class ScreeningLedger:
    """Screenings under ``home/privacy/screenings/<video_id>/<detector>.json``; a later
    screening of the same video by the same detector replaces an earlier failed one."""

    def __init__(self, home: Path):
        self.root = Path(home) / "privacy" / "screenings"

    def _path(self, video_id: str, detector: str) -> Path:
        return self.root / video_id / f"{detector}.json"

    def get(self, video_id: str, detector: str) -> Screening | None:
        path = self._path(video_id, detector)
        if not path.is_file():
            return None
        return Screening.model_validate_json(path.read_text())

    def record(self, screening: Screening) -> Screening:
        from surgflow.storage import json_bytes, write_atomic

        write_atomic(self._path(screening.video_id, screening.detector),
                     json_bytes(screening.model_dump(mode="json")))
        return screening

    def of_video(self, video_id: str) -> list[Screening]:
        folder = self.root / video_id
        if not folder.is_dir():
            return []
        return sorted((Screening.model_validate_json(p.read_text())
                       for p in folder.glob("*.json")), key=lambda s: s.at)


def clearance(home: Path, video, policy: PrivacyPolicy) -> Clearance:
    """Whether ``video`` (a registered :class:`~surgflow.data.registry.VideoRecord`) may be
    shown to people under ``policy``, and what to black out: the privacy track's resolved
    OutOfBody ranges (a person's privacy labels beat the detector's) widened by
    :data:`MARGIN_S`."""
    from surgflow.data.versions import DatasetStore

    detector = policy.detector
    if not policy.required:
        return Clearance(video_id=video.video_id, cleared=True,
                         reason="privacy screening is off (SURGFLOW_PRIVACY_SCREENING=off)")
    def held(why: str) -> Clearance:
        return Clearance(video_id=video.video_id, cleared=False, reason=why, detector=detector)

    ledger = ScreeningLedger(home)
    done = ledger.get(video.video_id, detector) if detector is not None else None
    why = hold_reason(done, detector)
    if why is not None:
        earlier = [s.detector for s in ledger.of_video(video.video_id)]
        was = f" (screened before by {', '.join(earlier)} only)" if done is None and earlier \
            else ""
        return held(why + was)
    if done.sha256 != video.sha256:
        return held(f"screened content {done.sha256[:12]} is not the registered content "
                    f"{video.sha256[:12]}")
    store = DatasetStore(home)
    if store.latest_version(PRIVACY) is None:
        return held(f"screened by {detector}, but the privacy track has no version")
    intervals = store.find_intervals(PRIVACY, [video.video_id]).get(video.video_id, [])
    out = tuple((i.start_frame, i.end_frame) for i in intervals if i.label == OUT_OF_BODY)
    black = blackout_ranges(out, video.num_frames, video.fps)
    return Clearance(video_id=video.video_id, cleared=True, detector=detector, out_of_body=out,
                     blackout=black,
                     reason=f"screened by {detector}: {frames_in(out)} out-of-body frames, "
                            f"{frames_in(black)} blacked out")


def hold_reason(done: Screening | None, detector: str | None) -> str | None:
    """Why a video with screening ``done`` (by ``detector``, or None) is held; None: it is
    not."""
    if detector is None:
        return (f"no out-of-body detector is in production ({PRIVACY_MODEL}); train one "
                "(recipe privacy-tiny) and promote it, and every video is screened")
    if done is None:
        return f"not screened yet by the production detector {detector}"
    if done.status != "screened":
        return f"screening by {detector} failed: {done.reason}"
    return None


def screening_event_id(video_sha256: str, detector: str) -> str:
    """The event id of a detector's labels for one video's content: screening the same
    content with the same detector again applies nothing new."""
    return f"privacy-{detector}-{video_sha256[:16]}"


def now() -> datetime:
    return datetime.now(UTC)
