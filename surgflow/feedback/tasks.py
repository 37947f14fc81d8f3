"""Feedback tasks: low-confidence inference segments that annotators should look at (SPEC §3).

:func:`tasks_for` is pure: one task per inference segment whose confidence is below the
threshold, with a ``task_id`` derived from (video, range, model name, model version) only, so a
replayed or re-sent inference event yields the same ids. :class:`TaskLedger` is the durable
record under ``SURGFLOW_HOME/feedback/tasks``: a task is created once (no-overwrite publish),
marked published once it is acknowledged on the ``feedback-tasks`` topic (unpublished ones are
sent again after a crash, with the same ``task_id``), and completed when an annotation carrying
its ``task_id`` is applied.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

from surgflow.data.storage import json_bytes, write_exclusive
from surgflow.feedback.schemas import FeedbackTask, InferenceEvent

TASK_ID = "t-{}"


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


class TaskLedger:
    """Created, published and completed feedback tasks."""

    def __init__(self, home: Path):
        self.root = Path(home) / "feedback" / "tasks"

    def create(self, task: FeedbackTask) -> bool:
        """Record a task; False if a task with its id exists already."""
        return write_exclusive(self.root / f"{task.task_id}.json",
                               json_bytes(task.model_dump(mode="json", by_alias=True)))

    def mark_published(self, task_id: str) -> None:
        write_exclusive(self.root / f"{task_id}.published", b"")

    def unpublished(self) -> list[FeedbackTask]:
        if not self.root.is_dir():
            return []
        return [FeedbackTask.model_validate_json(f.read_text())
                for f in sorted(self.root.glob("*.json"))
                if not f.with_suffix(".published").exists()]

    def complete(self, task_id: str, event_id: str, at: datetime) -> bool:
        """Mark a task completed by an applied annotation; False if it was already."""
        return write_exclusive(self.root / f"{task_id}.completed",
                               json_bytes({"event_id": event_id, "at": at.isoformat()}))

    def list(self) -> list[dict]:
        """Every task with its ``status`` (open or completed) and the completing event."""
        if not self.root.is_dir():
            return []
        out = []
        for f in sorted(self.root.glob("t-*.json")):
            task = json.loads(f.read_text())
            done = f.with_suffix(".completed")
            if done.exists():
                info = json.loads(done.read_text())
                task |= {"status": "completed", "completed_by": info["event_id"],
                         "completed_at": info["at"]}
            else:
                task |= {"status": "open", "completed_by": None, "completed_at": None}
            out.append(task)
        return sorted(out, key=lambda t: (t["created_at"], t["task_id"]))
