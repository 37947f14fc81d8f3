"""Feedback tasks: low-confidence inference segments that annotators should look at (SPEC §3).

The decisions are pure:

- :func:`tasks_for`: one task per inference segment whose confidence is below the threshold,
  with a ``task_id`` derived from (video, range, model name, model version) only, so a replayed
  or re-sent inference event yields the same ids;
- :func:`decide`: which of those tasks to raise and which open tasks to close, given the frames
  humans have labelled. A human label always wins its frames (SPEC §4), so the human-labelled
  frames of a video are those of the resolved dataset version, whatever the order the
  annotation and the inference event arrived in (same batch, or the annotation first). A task
  whose range humans have labelled completely is not raised; an open task whose range humans
  label completely by other means (an annotation without its ``task_id``) is closed.

:class:`TaskLedger` is the durable record under ``SURGFLOW_HOME/feedback/tasks``: a task is
created once (no-overwrite publish), marked published once it is acknowledged on the
``feedback-tasks`` topic (unpublished ones are sent again after a crash, with the same
``task_id``), completed when an annotation carrying its ``task_id`` is applied, and closed when
other human labels cover its range. A task skipped or closed is never raised again for the same
(video, range, model version).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from surgflow.data.labels import Interval
from surgflow.feedback.schemas import FeedbackTask, InferenceEvent
from surgflow.storage import json_bytes, write_exclusive

TASK_ID = "t-{}"

#: frame ranges ``[start, end)``, sorted, non-overlapping and not touching
Ranges = Sequence[tuple[int, int]]


def task_id(video_id: str, start_frame: int, end_frame: int, model: str, version: int) -> str:
    raw = json.dumps([video_id, start_frame, end_frame, model, version])
    return TASK_ID.format(hashlib.sha256(raw.encode()).hexdigest()[:24])


def tasks_for(event: InferenceEvent, threshold: float, now: datetime) -> list[FeedbackTask]:
    """The feedback tasks an inference event asks for (confidence strictly below threshold)."""
    out: dict[str, FeedbackTask] = {}
    for seg in event.segments:
        if seg.confidence >= threshold:
            continue
        tid = task_id(event.video_id, seg.start_frame, seg.end_frame,
                      event.model.name, event.model.version)
        out.setdefault(tid, FeedbackTask(
            task_id=tid, video_id=event.video_id, procedure=event.procedure,
            start_frame=seg.start_frame, end_frame=seg.end_frame, predicted_label=seg.label,
            confidence=seg.confidence, model=event.model, created_at=now,
        ))
    return list(out.values())


def human_ranges(intervals: Iterable[Interval]) -> list[tuple[int, int]]:
    """The frames human labels hold among a video's resolved intervals, as merged ranges."""
    out: list[tuple[int, int]] = []
    for iv in sorted((iv for iv in intervals if iv.provenance == "human"),
                     key=lambda iv: iv.start_frame):
        if out and iv.start_frame <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], iv.end_frame))
        else:
            out.append((iv.start_frame, iv.end_frame))
    return out


def covered(start_frame: int, end_frame: int, ranges: Ranges) -> bool:
    """Whether every frame of ``[start_frame, end_frame)`` lies in ``ranges`` (merged)."""
    return any(lo <= start_frame and end_frame <= hi for lo, hi in ranges)


def covering_event(start_frame: int, end_frame: int, intervals: Iterable[Interval]) -> str | None:
    """The human event holding most frames of the range (ties: the smallest ``event_id``)."""
    frames: dict[str, int] = {}
    for iv in intervals:
        overlap = min(end_frame, iv.end_frame) - max(start_frame, iv.start_frame)
        if iv.provenance == "human" and overlap > 0:
            frames[iv.event_id] = frames.get(iv.event_id, 0) + overlap
    return min(frames, key=lambda e: (-frames[e], e)) if frames else None


@dataclass(frozen=True)
class TaskDecision:
    """What a batch does with tasks: raise ``create``; close ``close`` (task_id, event_id)."""

    create: list[FeedbackTask]
    close: list[tuple[str, str]]


def decide(candidates: Iterable[FeedbackTask], open_tasks: Iterable[FeedbackTask],
           intervals: Mapping[str, Sequence[Interval]]) -> TaskDecision:
    """Raise the candidates whose range humans have not labelled completely; close the open
    tasks whose range they have. ``intervals`` are the resolved intervals of each video
    concerned (a video missing from it has no human labels)."""
    ranges: dict[str, list[tuple[int, int]]] = {}

    def human(video_id: str) -> list[tuple[int, int]]:
        if video_id not in ranges:
            ranges[video_id] = human_ranges(intervals.get(video_id, ()))
        return ranges[video_id]

    create = [t for t in candidates
              if not covered(t.start_frame, t.end_frame, human(t.video_id))]
    close = []
    for t in open_tasks:
        if covered(t.start_frame, t.end_frame, human(t.video_id)):
            by = covering_event(t.start_frame, t.end_frame, intervals.get(t.video_id, ()))
            assert by is not None  # a covered range has at least one human interval
            close.append((t.task_id, by))
    return TaskDecision(create, sorted(close))


class TaskLedger:
    """Created, published, completed and closed feedback tasks.

    Layout: ``<task_id>.json`` (the task), ``<task_id>.published``, ``<task_id>.completed``
    (``{"event_id", "at", "status"}``, status ``completed`` or ``closed``), and
    ``by-video/<hash of video_id>/<task_id>`` so that a batch reads only its videos' tasks.
    """

    def __init__(self, home: Path):
        self.root = Path(home) / "feedback" / "tasks"

    def _video_dir(self, video_id: str) -> Path:
        return self.root / "by-video" / hashlib.sha256(video_id.encode()).hexdigest()[:24]

    def create(self, task: FeedbackTask) -> bool:
        """Record a task; False if a task with its id exists already."""
        # index first: a crash between the two leaves an index entry without a task (ignored),
        # never a task its video's lookup cannot find
        write_exclusive(self._video_dir(task.video_id) / task.task_id, b"")
        return write_exclusive(self.root / f"{task.task_id}.json",
                               json_bytes(task.model_dump(mode="json", by_alias=True)))

    def mark_published(self, task_id: str) -> None:
        write_exclusive(self.root / f"{task_id}.published", b"")

    def hold(self, task_id: str, reason: str) -> None:
        """Keep a recorded task off the topic until :meth:`unhold` (its video may not be
        shown to people yet)."""
        write_exclusive(self.root / "held" / task_id, reason.encode())

    def held(self) -> list[FeedbackTask]:
        """The held tasks that are still open and unpublished."""
        folder = self.root / "held"
        if not folder.is_dir():
            return []
        out = []
        for entry in sorted(folder.iterdir()):
            f = self.root / f"{entry.name}.json"
            if f.is_file() and not self._done(entry.name) and \
                    not f.with_suffix(".published").exists():
                out.append(FeedbackTask.model_validate_json(f.read_text()))
        return out

    def unhold(self, task_id: str) -> None:
        (self.root / "held" / task_id).unlink(missing_ok=True)

    def _done(self, task_id: str) -> bool:
        return (self.root / f"{task_id}.completed").exists()

    def unpublished(self) -> list[FeedbackTask]:
        """Tasks recorded but never acknowledged on the topic, still open and not held."""
        if not self.root.is_dir():
            return []
        return [FeedbackTask.model_validate_json(f.read_text())
                for f in sorted(self.root.glob("t-*.json"))
                if not f.with_suffix(".published").exists() and not self._done(f.stem)
                and not (self.root / "held" / f.stem).exists()]

    def open_for(self, video_ids: Iterable[str]) -> list[FeedbackTask]:
        """The open tasks of these videos."""
        out = []
        for video_id in sorted(set(video_ids)):
            d = self._video_dir(video_id)
            if not d.is_dir():
                continue
            for entry in sorted(d.iterdir()):
                f = self.root / f"{entry.name}.json"
                if f.is_file() and not self._done(entry.name):
                    out.append(FeedbackTask.model_validate_json(f.read_text()))
        return out

    def complete(self, task_id: str, event_id: str, at: datetime) -> bool:
        """Mark a task completed by an applied annotation; False if it was done already."""
        return self._finish(task_id, event_id, at, "completed")

    def close(self, task_id: str, event_id: str, at: datetime) -> bool:
        """Mark a task closed: human labels of ``event_id`` (not naming it) cover its range."""
        return self._finish(task_id, event_id, at, "closed")

    def _finish(self, task_id: str, event_id: str, at: datetime, status: str) -> bool:
        return write_exclusive(self.root / f"{task_id}.completed",
                               json_bytes({"event_id": event_id, "at": at.isoformat(),
                                           "status": status}))

    def list(self) -> list[dict]:
        """Every task with its ``status`` (open, completed or closed) and the event that
        completed or closed it."""
        if not self.root.is_dir():
            return []
        out = []
        for f in sorted(self.root.glob("t-*.json")):
            task = json.loads(f.read_text())
            done = f.with_suffix(".completed")
            if done.exists():
                info = json.loads(done.read_text())
                task |= {"status": info.get("status", "completed"),
                         "completed_by": info["event_id"], "completed_at": info["at"]}
            else:
                task |= {"status": "open", "completed_by": None, "completed_at": None}
            out.append(task)
        return sorted(out, key=lambda t: (t["created_at"], t["task_id"]))
