"""Committing synthetic videos and their labels into a real dataset store, for view tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from surgflow.config import get_settings
from surgflow.data.labels import LabelEvent, LabelSegment
from surgflow.data.registry import VideoRecord, VideoRegistry
from surgflow.data.synthetic import SyntheticVideo
from surgflow.data.versions import DatasetStore

PRODUCED = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def register(home: Path, videos: list[SyntheticVideo], procedure: str = "cholecystectomy",
             suffix: str = "") -> list[VideoRecord]:
    registry = VideoRegistry(home, get_settings().resolved_video_roots())
    return [
        registry.register(str(v.path), procedure=procedure, source=v.hospital,
                          video_id=v.video_id + suffix).record
        for v in videos
    ]


def event(record: VideoRecord, segments: list[dict], provenance: str = "human",
          confidence: float | None = None, n: int = 0) -> LabelEvent:
    return LabelEvent(
        event_id=f"{provenance}-{record.video_id}-{n}", video_id=record.video_id,
        provenance=provenance, produced_at=PRODUCED, partition=0, offset=n,
        segments=tuple(LabelSegment(s["start_frame"], s["end_frame"], s["label"],
                                    confidence if provenance == "model" else None)
                       for s in segments),
    )


def commit_corpus(home: Path, corpus: list[SyntheticVideo]) -> list[VideoRecord]:
    """Version 1 of ``cholecystectomy``: the first four videos labelled by annotators, the fifth
    by a model at confidence 0.9, the sixth by a model at confidence 0.4."""
    records = register(home, corpus)
    events = [event(r, v.segments) for r, v in zip(records[:4], corpus[:4], strict=True)]
    events.append(event(records[4], corpus[4].segments, "model", 0.9))
    events.append(event(records[5], corpus[5].segments, "model", 0.4))
    result = DatasetStore(home).commit("cholecystectomy", videos=records, events=events,
                                       offsets={})
    assert result.version == 1
    return records
