"""What an analysis produces on the wire: the ``surgflow.inference/v1`` event (SPEC §3), the HTTP
answer (SPEC §8), and the one sink both the HTTP service and the fleet publish through.

The builders are pure. The event id is a function of the video and the model version, so the
same video analysed again by the same version (a retry, a redelivery, a second request) yields
the same event, which the feedback flow applies at most once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from surgflow.feedback.dlq import DeadLetter
from surgflow.feedback.schemas import INFERENCE_SCHEMA, validate

log = logging.getLogger(__name__)


def inference_event_id(video_id: str, model_name: str, version: int) -> str:
    digest = hashlib.sha256(f"{video_id}\0{model_name}\0{version}".encode()).hexdigest()[:24]
    return f"inf-{digest}"


def inference_event(*, video_id: str, procedure: str, model_name: str, version: int,
                    segments: Sequence[Mapping[str, Any]],
                    produced_at: datetime | None = None) -> dict[str, Any]:
    """The ``surgflow.inference/v1`` event of one analysis, validated against the wire schema."""
    at = (produced_at or datetime.now(UTC)).astimezone(UTC)
    event = {
        "schema": INFERENCE_SCHEMA,
        "event_id": inference_event_id(video_id, model_name, version),
        "video_id": video_id, "procedure": procedure,
        "model": {"name": model_name, "version": int(version)},
        "produced_at": at.isoformat().replace("+00:00", "Z"),
        "segments": [_segment(s) for s in segments],
    }
    validate("inference", event)
    return event


def _segment(s: Mapping[str, Any]) -> dict[str, Any]:
    return {"start_frame": int(s["start_frame"]), "end_frame": int(s["end_frame"]),
            "label": str(s["label"]),
            "confidence": round(min(1.0, max(0.0, float(s["confidence"]))), 6)}


def analysis_response(event: Mapping[str, Any], *, fps: float, num_frames: int,
                      key_moments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """SPEC §8's answer to ``POST /v1/analyze``: the event's segments plus the key moments."""
    return {
        "video_id": event["video_id"], "procedure": event["procedure"],
        "model": dict(event["model"]), "fps": float(fps), "num_frames": int(num_frames),
        "segments": [dict(s) for s in event["segments"]],
        "key_moments": [{"frame": int(m["frame"]), "time_s": float(m["time_s"]),
                         "from_label": str(m["from_label"]), "to_label": str(m["to_label"])}
                        for m in key_moments],
    }


class EventSink:
    """Inference events and dead letters out through one Publisher, each waited for.

    Publisher keeps one list of pending sends; a lock makes "send, then wait for its
    acknowledgement" one step per caller, so concurrent requests never take each other's
    acknowledgements (a flush over loopback costs milliseconds).
    """

    def __init__(self, publisher):
        self.publisher = publisher
        self._lock = threading.Lock()

    def inference(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            self.publisher.inference(event)
            self.publisher.flush()

    def dead_letter(self, letter: DeadLetter) -> None:
        key = letter.key.decode("utf-8", "replace") if letter.key is not None else None
        with self._lock:
            self.publisher.send_raw("dlq", letter.value, key=key,
                                    headers=letter.headers())
            self.publisher.flush()

    def close(self) -> None:
        with self._lock:
            self.publisher.close()
