"""Durable parking for label events whose video is not registered yet (SPEC §4).

An inference or annotation event for an unknown ``video_id`` is written under
``SURGFLOW_HOME/feedback/parked/<video_id>/`` before the consumer's position moves past it, and
is applied (or dead-lettered) once the video arrives, whether through the ``videos`` topic or
``surgflow data ingest``. Entries keep the original bytes and stream position, so precedence
ties still break on the original (partition, offset) and a dead letter still names its source.
One entry per (topic, event_id): parking the same event again is a no-op.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from surgflow.data.registry import check_video_id
from surgflow.errors import BadInput
from surgflow.storage import json_bytes, write_exclusive


@dataclass(frozen=True)
class ParkedEvent:
    """A message set aside until its video is registered."""

    video_id: str
    event_id: str
    topic: str  # unprefixed topic name: inference or annotations
    partition: int
    offset: int
    value_b64: str
    procedure: str | None = None

    @property
    def value(self) -> bytes:
        return base64.b64decode(self.value_b64)

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.topic}\0{self.event_id}".encode()).hexdigest()[:32]

    @property
    def filename(self) -> str:
        # The procedure leads the name so that counting per dataset needs no file reads.
        return f"{self.procedure or '_'}.{self.key}.json"


def make(video_id: str, event_id: str, topic: str, partition: int, offset: int, value: bytes,
         procedure: str | None = None) -> ParkedEvent:
    return ParkedEvent(video_id, event_id, topic, partition, offset,
                       base64.b64encode(value).decode(), procedure)


class ParkingLot:
    """Parked events under ``home/feedback/parked``."""

    def __init__(self, home: Path):
        self.root = Path(home) / "feedback" / "parked"

    def _dir(self, video_id: str) -> Path:
        try:
            return self.root / check_video_id(video_id)
        except BadInput:
            # Not a usable directory name; hash it so it can still be parked and found.
            return self.root / ("_" + hashlib.sha256(video_id.encode()).hexdigest()[:32])

    def park(self, event: ParkedEvent) -> bool:
        """Store ``event`` durably; False if it was parked already."""
        return write_exclusive(self._dir(event.video_id) / event.filename,
                               json_bytes(asdict(event)))

    def parked(self, video_id: str) -> list[ParkedEvent]:
        """The events parked for ``video_id``, in their original stream order."""
        d = self._dir(video_id)
        if not d.is_dir():
            return []
        events = [ParkedEvent(**entry) for f in d.glob("*.json")
                  if (entry := _read(f)) is not None]
        return sorted(events, key=lambda e: (e.topic, e.partition, e.offset))

    def videos(self) -> list[str]:
        """Video ids that have parked events."""
        if not self.root.is_dir():
            return []
        out = []
        for d in sorted(self.root.iterdir()):
            for f in d.glob("*.json"):
                if (entry := _read(f)) is not None:
                    out.append(entry["video_id"])
                    break
        return out

    def release(self, event: ParkedEvent) -> None:
        """Forget a parked event once it is applied or dead-lettered."""
        (self._dir(event.video_id) / event.filename).unlink(missing_ok=True)

    def count(self, procedure: str | None = None) -> int:
        """How many events are parked (attributed to ``procedure`` when given)."""
        if not self.root.is_dir():
            return 0
        pattern = "*/*.json" if procedure is None else f"*/{procedure}.*.json"
        return sum(1 for _ in self.root.glob(pattern))


def _read(path: Path) -> dict | None:
    """A parked entry, or None when it is gone: consumers of one home share the lot, and one
    releases an entry (after the version that applied it is durable) while another lists it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
