"""The manifest of a dataset version, its statistics and its content fingerprint.

A manifest is one immutable JSON file per version. Statistics and the fingerprint are kept so
that a child can derive its own from its parent's by subtracting what the changed videos
contributed before and adding what they contribute now: a small change costs O(change).

The fingerprint is a multiset hash: the sum modulo 2**256 of one sha256 per video over the
video's identity and its coalesced resolved labels, hashed once more. It depends only on the
content, never on the sequence of versions that led to it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime

from pydantic import BaseModel

from surgflow.data.datafiles import DataFile, group_runs
from surgflow.data.labels import PROVENANCES, Segment
from surgflow.data.splits import SPLITS

MOD = 2**256


class Manifest(BaseModel, frozen=True):
    """One dataset version (immutable once published)."""

    format: int = 1
    dataset: str
    version: int
    parent: int | None
    created_at: datetime
    files: list[DataFile]
    offsets: dict[str, int]
    events_applied: int
    parked_events: int
    videos: int
    sources: dict[str, int]
    label_frames: dict[str, int]
    provenance_frames: dict[str, int]
    splits: dict[str, int]
    fingerprint: str
    fingerprint_sum: str

    def runs(self) -> list[dict[str, DataFile]]:
        """The data files grouped by run, oldest first: ``[{kind: DataFile}]``."""
        return group_runs(self.files)

    def run_count(self) -> int:
        return 1 + max((f.run for f in self.files), default=-1)

    def show(self) -> dict:
        """``surgflow data show --json`` (SPEC §6)."""
        return {
            "dataset": self.dataset, "version": self.version, "parent": self.parent,
            "created_at": self.created_at.isoformat(), "fingerprint": self.fingerprint,
            "videos": self.videos, "sources": dict(self.sources),
            "events_applied": self.events_applied, "parked_events": self.parked_events,
            "label_frames": dict(self.label_frames),
            "provenance_frames": dict(self.provenance_frames),
            "splits": {s: self.splits.get(s, 0) for s in SPLITS},
        }

    def summary(self) -> dict:
        """One entry of ``surgflow data versions --json`` (SPEC §6)."""
        return {
            "version": self.version, "parent": self.parent,
            "created_at": self.created_at.isoformat(), "events_applied": self.events_applied,
            "videos": self.videos,
        }


def video_hash(video_id: str, sha256: str, segments: Iterable[Segment]) -> str:
    """sha256 of a video's identity and its coalesced labels (one term of the fingerprint)."""
    body = [video_id, sha256, [
        [s.start_frame, s.end_frame, s.label, s.provenance, s.confidence] for s in segments
    ]]
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()


def fingerprint_of(total: int) -> str:
    return hashlib.sha256(f"surgflow-dataset/v1:{total % MOD:064x}".encode()).hexdigest()


class Stats:
    """Mutable statistics while a version is built: add or remove one video's contribution."""

    def __init__(self, parent: Manifest | None = None):
        self.sources: Counter[str] = Counter(parent.sources if parent else {})
        self.labels: Counter[str] = Counter(parent.label_frames if parent else {})
        self.provenance: Counter[str] = Counter(parent.provenance_frames if parent else {})
        self.splits: Counter[str] = Counter(parent.splits if parent else {})
        self.videos = parent.videos if parent else 0
        self.total = int(parent.fingerprint_sum, 16) if parent else 0

    def add_video(self, source: str, split: str, sign: int = 1) -> None:
        self.sources[source] += sign
        self.splits[split] += sign
        self.videos += sign

    def add_labels(self, segments: Iterable[Segment], content_hash: str, sign: int = 1) -> None:
        for s in segments:
            self.labels[s.label] += sign * (s.end_frame - s.start_frame)
            self.provenance[s.provenance] += sign * (s.end_frame - s.start_frame)
        self.add_hash(content_hash, sign)

    def add_frames(self, labels: Mapping[str, int], provenance: Mapping[str, int],
                   sign: int = 1) -> None:
        """Labelled frames by label and by provenance, summed over some videos."""
        for k, n in labels.items():
            self.labels[k] += sign * n
        for k, n in provenance.items():
            self.provenance[k] += sign * n

    def add_hash(self, content_hash: str, sign: int = 1) -> None:
        """A video's term of the fingerprint."""
        self.total = (self.total + sign * int(content_hash, 16)) % MOD

    def fields(self) -> dict:
        """The manifest fields these statistics fill."""
        return {
            "videos": self.videos,
            "sources": _nonzero(self.sources),
            "label_frames": _nonzero(self.labels),
            "provenance_frames": {p: self.provenance.get(p, 0) for p in PROVENANCES},
            "splits": {s: self.splits.get(s, 0) for s in SPLITS},
            "fingerprint": fingerprint_of(self.total),
            "fingerprint_sum": f"{self.total % MOD:064x}",
        }


def _nonzero(c: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in sorted(c.items()) if v}
