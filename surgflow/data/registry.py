"""The video registry: every registered video, probed and content-hashed (SPEC §3, §6).

One JSON record per video under ``SURGFLOW_HOME/videos``, created with the no-overwrite
primitive so concurrent registrations of one ``video_id`` cannot both win. Files that cannot be
registered are recorded under ``SURGFLOW_HOME/quarantine`` with their reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from surgflow.data.taxonomy import ProcedureCatalog, is_track
from surgflow.data.video import VideoInfo, probe, resolve_video_uri, sha256_file
from surgflow.errors import BadInput, ConflictError, NotFound, SurgflowError
from surgflow.storage import json_bytes, write_exclusive

VIDEO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class VideoRecord(VideoInfo):
    """A registered video (the ``videos`` table of ``surgflow data query``): who it is, where it
    lies, its content hash, its procedure and source, and what probing it found.

    ``size_bytes`` and ``registered_at`` are the registry's own bookkeeping; a dataset
    version's snapshot of the record does not keep them (None there).
    """

    video_id: str
    uri: str
    path: str
    sha256: str
    procedure: str
    source: str
    recorded_at: datetime | None
    size_bytes: int | None = None
    registered_at: datetime | None = None


class QuarantineEntry(BaseModel, frozen=True):
    """Something that could not be registered, and why."""

    video_id: str | None
    uri: str
    reason: str
    at: datetime
    event_id: str | None = None


class RegisterResult(BaseModel, frozen=True):
    status: Literal["registered", "duplicate"]
    record: VideoRecord


def check_video_id(video_id: str) -> str:
    if not isinstance(video_id, str) or not VIDEO_ID.match(video_id):
        raise BadInput(
            f"video_id {video_id!r} must be 1-128 characters of letters, digits, '.', '_', '-' "
            "starting with a letter or digit"
        )
    return video_id


class VideoRegistry:
    """Registered videos and quarantined files under ``home``."""

    def __init__(self, home: Path, video_roots: list[Path]):
        self.home = Path(home)
        self.root = self.home / "videos"
        self.quarantine_root = self.home / "quarantine"
        self.video_roots = video_roots
        self.procedures = ProcedureCatalog(self.home)

    def _procedure(self, procedure: str) -> None:
        self.procedures.get(procedure)
        if is_track(procedure):
            raise BadInput(f"{procedure!r} is the label track every video carries, not a "
                           "procedure a video is registered under")

    def _record_path(self, video_id: str) -> Path:
        return self.root / f"{check_video_id(video_id)}.json"

    def get(self, video_id: str) -> VideoRecord:
        path = self._record_path(video_id)
        if not path.is_file():
            raise NotFound(f"video {video_id!r} is not registered")
        return VideoRecord.model_validate_json(path.read_text())

    def find(self, video_id: str) -> VideoRecord | None:
        try:
            return self.get(video_id)
        except NotFound:
            return None

    def list(self) -> list[VideoRecord]:
        if not self.root.is_dir():
            return []
        return [
            VideoRecord.model_validate_json(f.read_text()) for f in sorted(self.root.glob("*.json"))
        ]

    def register(
        self,
        uri: str,
        procedure: str,
        source: str,
        video_id: str | None = None,
        recorded_at: datetime | None = None,
    ) -> RegisterResult:
        """Probe, hash and record one video.

        Raises UnsafeURI (outside the video roots; the file is not opened), VideoError (missing,
        empty, truncated, undecodable), UnknownName (procedure) or ConflictError (the video_id
        exists with other content; the message names both hashes). Registering the same content
        again returns status ``duplicate``.
        """
        path = resolve_video_uri(uri, self.video_roots)
        video_id = check_video_id(video_id if video_id is not None else path.stem)
        self._procedure(procedure)
        if not source or not isinstance(source, str):
            raise BadInput(f"video {video_id!r}: source must be a non-empty string")
        existing = self.find(video_id)
        info: VideoInfo = probe(path)
        digest = sha256_file(path)
        if existing is not None:
            return self._same_or_conflict(existing, digest, procedure)
        record = VideoRecord(
            **dict(info),
            video_id=video_id,
            uri=uri,
            path=str(path),
            sha256=digest,
            size_bytes=path.stat().st_size,
            procedure=procedure,
            source=source,
            recorded_at=recorded_at,
            registered_at=datetime.now(UTC),
        )
        if write_exclusive(self._record_path(video_id), json_bytes(record.model_dump(mode="json"))):
            return RegisterResult(status="registered", record=record)
        return self._same_or_conflict(self.get(video_id), digest, procedure)

    @staticmethod
    def _same_or_conflict(existing: VideoRecord, digest: str, procedure: str) -> RegisterResult:
        if existing.sha256 != digest:
            raise ConflictError(
                f"video {existing.video_id!r} is already registered with sha256 {existing.sha256}; "
                f"the new content has sha256 {digest}"
            )
        if existing.procedure != procedure:
            raise ConflictError(
                f"video {existing.video_id!r} is registered for procedure "
                f"{existing.procedure!r}, not {procedure!r}"
            )
        return RegisterResult(status="duplicate", record=existing)

    def quarantine(
        self, uri: str, reason: str, video_id: str | None = None, event_id: str | None = None
    ) -> QuarantineEntry:
        """Record that ``uri`` could not be registered (idempotent per uri, reason and event)."""
        entry = QuarantineEntry(
            video_id=video_id, uri=uri, reason=reason, at=datetime.now(UTC), event_id=event_id
        )
        key = hashlib.sha256(json.dumps([uri, reason, event_id]).encode()).hexdigest()[:20]
        write_exclusive(
            self.quarantine_root / f"{key}.json", json_bytes(entry.model_dump(mode="json"))
        )
        return entry

    def quarantined(self) -> list[QuarantineEntry]:
        if not self.quarantine_root.is_dir():
            return []
        entries = [
            QuarantineEntry.model_validate_json(f.read_text())
            for f in self.quarantine_root.glob("*.json")
        ]
        return sorted(entries, key=lambda e: e.at)

    def ingest(
        self,
        paths: Iterable[str | Path],
        procedure: str,
        source: str,
        on_done: Callable[[], None] | None = None,
    ) -> dict:
        """Register local files; bad files are quarantined and the others still registered.

        Returns ``{"registered", "duplicates", "quarantined", "conflicts"}`` lists.
        """
        self._procedure(procedure)  # an unknown procedure is bad input for the whole call
        report: dict[str, list] = {
            "registered": [],
            "duplicates": [],
            "quarantined": [],
            "conflicts": [],
        }
        for raw in paths:
            uri = str(Path(raw).absolute()) if "://" not in str(raw) else str(raw)
            video_id = Path(str(raw)).stem
            try:
                result = self.register(uri, procedure=procedure, source=source, video_id=video_id)
            except ConflictError as e:
                report["conflicts"].append({"uri": uri, "video_id": video_id, "reason": str(e)})
            except SurgflowError as e:
                entry = self.quarantine(uri, str(e), video_id=video_id)
                report["quarantined"].append(entry.model_dump(mode="json"))
            else:
                key = "registered" if result.status == "registered" else "duplicates"
                report[key].append(
                    {
                        "video_id": result.record.video_id,
                        "sha256": result.record.sha256,
                        "num_frames": result.record.num_frames,
                        "fps": result.record.fps,
                        "width": result.record.width,
                        "height": result.record.height,
                    }
                )
            if on_done:
                on_done()
        return report
