"""Feedback tasks as Label Studio video timelines, and annotations back as wire events. Pure.

A person sees a video's people media (:func:`surgflow.data.media.prepare_for_people`), whose
frame ``k`` is source frame ``k * step``. Label Studio numbers a video's frames from 1 and its
timeline ranges include both ends, so media frame ``k`` is Label Studio frame ``k + 1``:

- a source range ``[a, b)`` is shown as ``{"start": ceil(a / step) + 1, "end": ceil(b / step)}``;
- a drawn range ``{"start": p, "end": q}`` is source ``[(p - 1) * step, q * step)``, its end cut
  to the video's last frame when the media's last frame stands for fewer than ``step`` frames.

Each task's labelling config is generated from its procedure's taxonomy (:func:`label_config`):
the video, a ``phase`` timeline with one label per phase, a ``privacy`` timeline (OutOfBody,
InBody: the out-of-body detector's ranges, which people see black, and a person's correction of
them), and a ``review`` timeline on which the task's uncertain range is marked. An
annotation's ``phase`` and ``privacy`` regions become one annotation event
(:func:`annotation_event`): the regions that overlap the task's range, cut to that range (the
rest of the timeline is the model's, shown for context), under an event id derived from the
annotation's id and revision so that a webhook and a poll deliver the same event.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from surgflow.data.labels import Interval
from surgflow.data.privacy import IN_BODY, OUT_OF_BODY
from surgflow.feedback.schemas import FeedbackTask

PHASE = "phase"
PRIVACY_TRACK = "privacy"
REVIEW = "review"
REVIEW_LABEL = "Review"
VIDEO = "video"
SOURCE = "label-studio"


def label_config(procedure: str, labels: Sequence[str]) -> str:
    """The labelling config of ``procedure``'s project: its phases on a video timeline."""
    # the first nine phases get the keys 1-9: select a region, press a key, it is relabelled
    phase = "\n".join(
        f"    <Label value={quoteattr(label)}" + (f' hotkey="{n}"' if n <= 9 else "") + "/>"
        for n, label in enumerate(labels, 1))
    return f"""<View>
  <Header value="$title"/>
  <Text name="fix" value="$fix"/>
  <Video name="{VIDEO}" value="$video" frameRate="$fps" timelineHeight="160"/>
  <TimelineLabels name="{PHASE}" toName="{VIDEO}">
{phase}
  </TimelineLabels>
  <TimelineLabels name="{PRIVACY_TRACK}" toName="{VIDEO}">
    <Label value="{OUT_OF_BODY}" background="#000000" hotkey="o"/>
    <Label value="{IN_BODY}" background="#66aa66" hotkey="i"/>
  </TimelineLabels>
  <TimelineLabels name="{REVIEW}" toName="{VIDEO}">
    <Label value="{REVIEW_LABEL}" background="#999999"/>
  </TimelineLabels>
</View>
<!-- surgflow procedure {quoteattr(procedure)} -->
"""


@dataclass(frozen=True)
class Media:
    """What a timeline needs of a video's people media: frame rate, step, frames."""

    url: str
    fps: float
    step: int
    num_frames: int  # media frames
    source_frames: int


def to_ls(start: int, end: int, step: int) -> tuple[int, int] | None:
    """Label Studio's inclusive 1-based range showing source frames ``[start, end)``."""
    lo, hi = math.ceil(start / step) + 1, math.ceil(end / step)
    return (lo, hi) if lo <= hi else None


def from_ls(start: float, end: float, media: Media) -> tuple[int, int]:
    """The source frames ``[a, b)`` of a drawn inclusive range (may lie outside the video)."""
    lo, hi = round(start), round(end)
    a, b = (lo - 1) * media.step, hi * media.step
    if hi == media.num_frames:  # the last media frame stands for the rest of the video
        b = media.source_frames
    return a, b


def _region(control: str, start: int, end: int, label: str, rid: str) -> dict[str, Any]:
    return {"id": rid, "from_name": control, "to_name": VIDEO, "type": "timelinelabels",
            "value": {"ranges": [{"start": start, "end": end}], "timelinelabels": [label]}}


def prediction(intervals: Iterable[Interval], task: FeedbackTask, media: Media,
               privacy: Iterable[Interval] = ()) -> dict[str, Any]:
    """The production model's labels of the whole video as a Label Studio prediction, with
    the video's out-of-body ranges (``privacy``: its privacy-track intervals) on the
    ``privacy`` timeline and the task's uncertain range on the ``review`` timeline.

    ``score`` is the model's mean confidence over the frames it labels."""
    result, frames, weighted = [], 0, 0.0
    for n, iv in enumerate(sorted(privacy, key=lambda iv: iv.start_frame)):
        shown = to_ls(iv.start_frame, iv.end_frame, media.step)
        if iv.label == OUT_OF_BODY and shown is not None:
            result.append(_region(PRIVACY_TRACK, *shown, OUT_OF_BODY, f"p{n}"))
    for n, iv in enumerate(sorted(intervals, key=lambda iv: iv.start_frame)):
        if iv.provenance != "model":
            continue
        shown = to_ls(iv.start_frame, iv.end_frame, media.step)
        if shown is not None:
            result.append(_region(PHASE, *shown, iv.label, f"m{n}"))
        length = iv.end_frame - iv.start_frame
        frames += length
        weighted += length * (iv.confidence or 0.0)
    review = to_ls(task.start_frame, task.end_frame, media.step)
    if review is not None:
        result.append(_region(REVIEW, *review, REVIEW_LABEL, "review"))
    return {"model_version": f"{task.model.name}@{task.model.version}",
            "score": round(weighted / frames, 4) if frames else 0.0, "result": result}


def task_payload(task: FeedbackTask, media: Media, intervals: Iterable[Interval],
                 fix: str = "", privacy: Iterable[Interval] = ()) -> dict[str, Any]:
    """One Label Studio task (data and prediction) for one feedback task."""
    seconds = f"{task.start_frame / (media.fps * media.step):.1f}–" \
              f"{task.end_frame / (media.fps * media.step):.1f} s"
    title = (f"{task.video_id}: check {seconds} — the model says {task.predicted_label} "
             f"({task.confidence:.0%} sure)")
    return {"data": {"video": media.url, "fps": media.fps, "title": title, "fix": fix,
                     "surgflow_task_id": task.task_id, "video_id": task.video_id,
                     "start_frame": task.start_frame, "end_frame": task.end_frame,
                     "step": media.step, "source_frames": media.source_frames,
                     "media_frames": media.num_frames, "confidence": task.confidence},
            "predictions": [prediction(intervals, task, media, privacy)]}


def media_of(data: Mapping[str, Any]) -> Media:
    """The media a Label Studio task's data describes (see :func:`task_payload`)."""
    return Media(url=str(data["video"]), fps=float(data["fps"]), step=int(data["step"]),
                 num_frames=int(data["media_frames"]), source_frames=int(data["source_frames"]))


def event_id(annotation_id: int, updated_at: str) -> str:
    """The annotation event id of one revision of a Label Studio annotation."""
    revision = hashlib.sha256(updated_at.encode()).hexdigest()[:12]
    return f"ls-a{annotation_id}-r{revision}"


def annotation_event(annotation: Mapping[str, Any], data: Mapping[str, Any],
                     annotator: str) -> dict[str, Any]:
    """The wire annotation event (SPEC §3) of a submitted Label Studio annotation of a task.

    Regions overlapping the task's range are cut to it; a region reaching outside the video is
    kept whole so that the stream's checks reject it with its reason rather than hiding it.
    The result may break the wire rules (an unknown label, overlaps): the feedback flow
    dead-letters such an event, and the sync writes the reason back onto the task.
    """
    media = media_of(data)
    lo, hi = int(data["start_frame"]), int(data["end_frame"])
    segments = []
    for region in annotation.get("result") or ():
        if region.get("from_name") not in (PHASE, PRIVACY_TRACK):
            continue
        value = region.get("value") or {}
        names = value.get("timelinelabels") or []
        label = names[0] if len(names) == 1 else " + ".join(map(str, names)) or "(none)"
        for r in value.get("ranges") or ():
            a, b = from_ls(float(r["start"]), float(r["end"]), media)
            if b <= lo or a >= hi:
                continue
            if a >= 0 and b <= media.source_frames:
                a, b = max(a, lo), min(b, hi)
            segments.append({"start_frame": a, "end_frame": b, "label": label})
    segments.sort(key=lambda s: (s["start_frame"], s["end_frame"]))
    return {"schema": "surgflow.annotation/v1",
            "event_id": event_id(int(annotation["id"]), str(annotation["updated_at"])),
            "video_id": str(data["video_id"]), "annotator": annotator,
            "task_id": str(data["surgflow_task_id"]),
            "produced_at": str(annotation["updated_at"]), "segments": segments,
            "provenance": {"tool": SOURCE, "annotation_id": int(annotation["id"]),
                           "task": int(annotation["task"]),
                           "project": int(annotation.get("project") or 0)}}


def ls_result(segments: Iterable[tuple[int, int, str]], media: Media) -> list[dict[str, Any]]:
    """A result drawing source ranges ``(start, end, label)``: privacy labels on the
    ``privacy`` timeline, phases on the ``phase`` timeline."""
    out = []
    for n, (a, b, label) in enumerate(segments):
        shown = to_ls(a, b, media.step)
        if shown is not None:
            control = PRIVACY_TRACK if label in (OUT_OF_BODY, IN_BODY) else PHASE
            out.append(_region(control, *shown, label, f"h{n}"))
    return out
