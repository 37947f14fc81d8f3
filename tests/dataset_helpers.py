"""Import videos that come with ground-truth labels as a dataset version, for the tests, the
benchmarks (``python -m bench.x``) and ``scripts/gpu_check.py``.

A folder of videos each with a ``<stem>.segments.json`` beside it (the synthetic corpora)
becomes human-labelled data: the videos are registered like any upload and their segments
committed as one annotation event per video, so training reads them through the same dataset
views as labels that arrived on the stream. The events did not come from Kafka: they carry
partition 0, offset 0 and commit no stream positions, which is why this is not library code.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from surgflow.data.labels import LabelEvent, LabelSegment
from surgflow.data.registry import VideoRegistry
from surgflow.data.synthetic import segments_path
from surgflow.data.versions import CommitResult, DatasetStore
from surgflow.errors import BadInput


def import_labelled(home: Path, video_roots: list[Path], videos: list[Path], procedure: str,
                    source: str, track: str | None = None) -> CommitResult:
    """Register ``videos`` and commit their ground-truth segments to dataset ``procedure``
    (with ``track="privacy"``: their privacy-track truth to the privacy track)."""
    registry = VideoRegistry(home, video_roots)
    report = registry.ingest(videos, procedure=procedure, source=source)
    bad = report["quarantined"] + report["conflicts"]
    if bad:
        raise BadInput(f"could not register {len(bad)} videos: {bad[0]}")
    records, events = [], []
    now = datetime.now(UTC)
    for path in videos:
        record = registry.get(Path(path).stem)
        seg_path = segments_path(Path(path))
        if not seg_path.is_file():
            raise BadInput(f"video {path}: no label file {seg_path.name} beside it")
        raw_bytes = seg_path.read_bytes()
        meta = json.loads(raw_bytes)
        raw = meta[track or "segments"] if isinstance(meta, dict) else meta
        segments = tuple(LabelSegment(int(s["start_frame"]), int(s["end_frame"]), s["label"])
                         for s in raw)
        digest = hashlib.sha256(f"{record.sha256}:{raw_bytes.hex()}".encode())
        events.append(LabelEvent(f"import-{track or ''}{digest.hexdigest()[:20]}",
                                 record.video_id, "human",
                                 now, 0, 0, segments))
        records.append(record)
    return DatasetStore(home).commit(track or procedure, videos=records, events=events,
                                     offsets={})
