"""Wire format v1 of the feedback topics (SPEC §3).

Messages are UTF-8 JSON objects. Unknown extra fields are ignored; every known field is checked.
``produced_at``/``recorded_at`` must carry a time zone and are normalised to UTC, so that
``Z`` and ``+00:00`` compare as the same instant (SPEC §4). Frame ranges are half-open and
checked for shape here; whether a range lies inside its video is checked once the video is known.

:func:`decode` turns raw bytes from a topic into a model or raises :class:`WireError` with a
readable reason, which is what the dead-letter queue records.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from surgflow.data.labels import as_utc
from surgflow.errors import BadInput, describe_validation, dotted

VIDEO_SCHEMA = "surgflow.video/v1"
INFERENCE_SCHEMA = "surgflow.inference/v1"
ANNOTATION_SCHEMA = "surgflow.annotation/v1"
TASK_SCHEMA = "surgflow.feedback-task/v1"


class WireError(BadInput):
    """A message that cannot be accepted as it is; the text is the dead-letter reason."""


UtcTime = Annotated[datetime, AfterValidator(as_utc)]
Text = Annotated[str, Field(min_length=1, max_length=256)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class ModelRef(_Wire):
    name: Text
    version: int = Field(ge=0)


class Segment(_Wire):
    """A half-open frame range ``[start_frame, end_frame)`` with its label."""

    start_frame: int = Field(ge=0)
    end_frame: int = Field(ge=1)
    label: Text
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if self.end_frame <= self.start_frame:
            raise ValueError(
                f"end_frame {self.end_frame} must be greater than start_frame {self.start_frame}"
            )
        return self


class VideoEvent(_Wire):
    schema_: Literal["surgflow.video/v1"] = Field(alias="schema")
    event_id: Text
    video_id: Text
    uri: Text = Field(max_length=4096)
    procedure: Text
    source: Text
    recorded_at: UtcTime | None = None


class InferenceSegment(Segment):
    confidence: float = Field(ge=0.0, le=1.0)


class InferenceEvent(_Wire):
    schema_: Literal["surgflow.inference/v1"] = Field(alias="schema")
    event_id: Text
    video_id: Text
    procedure: Text
    model: ModelRef
    produced_at: UtcTime
    segments: tuple[InferenceSegment, ...] = Field(min_length=1)


class AnnotationSegment(Segment):
    confidence: None = None


class AnnotationEvent(_Wire):
    schema_: Literal["surgflow.annotation/v1"] = Field(alias="schema")
    event_id: Text
    video_id: Text
    annotator: Text
    task_id: Text | None = None
    produced_at: UtcTime
    segments: tuple[AnnotationSegment, ...] = Field(min_length=1)


class FeedbackTask(_Wire):
    schema_: Literal["surgflow.feedback-task/v1"] = Field(default=TASK_SCHEMA, alias="schema")
    task_id: Text
    video_id: Text
    procedure: Text
    start_frame: int = Field(ge=0)
    end_frame: int = Field(ge=1)
    predicted_label: Text
    confidence: float = Field(ge=0.0, le=1.0)
    model: ModelRef
    created_at: UtcTime


Event = VideoEvent | InferenceEvent | AnnotationEvent

#: topic name (without prefix) -> the model its messages must follow
TOPIC_SCHEMAS: dict[str, type[_Wire]] = {
    "videos": VideoEvent,
    "inference": InferenceEvent,
    "annotations": AnnotationEvent,
    "feedback-tasks": FeedbackTask,
}
SCHEMA_NAMES = {
    "videos": VIDEO_SCHEMA, "inference": INFERENCE_SCHEMA, "annotations": ANNOTATION_SCHEMA,
    "feedback-tasks": TASK_SCHEMA,
}
INPUT_TOPICS = ("videos", "inference", "annotations")
KIND_TOPIC = {"video": "videos", "inference": "inference", "annotation": "annotations"}


def decode(topic: str, value: bytes | None) -> Event:
    """Parse one message of ``topic`` (unprefixed name); raise WireError saying what is wrong."""
    model = TOPIC_SCHEMAS.get(topic)
    if model is None:
        raise WireError(f"topic {topic!r} carries no surgflow input messages")
    if value is None:
        raise WireError("message has no value (null)")
    try:  # fast path: parse and validate in one step; failures are re-examined for a reason
        event = model.model_validate_json(value)
    except ValidationError:
        pass
    else:
        if event.schema_ == SCHEMA_NAMES[topic]:
            return event  # type: ignore[return-value]
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"message is not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise WireError(f"message is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    return validate(topic, obj)


def validate(topic: str, obj: object) -> Event:
    """Check a parsed JSON value against ``topic``'s schema; raise WireError naming the fields."""
    model = TOPIC_SCHEMAS[topic]
    if not isinstance(obj, dict):
        raise WireError(f"message must be a JSON object, got {type(obj).__name__}")
    expected = SCHEMA_NAMES[topic]
    if obj.get("schema") != expected:
        raise WireError(
            f"schema must be {expected!r} on topic {topic!r}, got {obj.get('schema')!r}"
        )
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise WireError(f"schema {expected} failed: {describe_validation(e, _field)}") from e


def _field(loc: tuple[int | str, ...]) -> str:
    return dotted(loc).replace("schema_", "schema") or "message"


def encode(event: _Wire) -> bytes:
    """The wire bytes of a model (field ``schema`` under its wire name)."""
    return event.model_dump_json(by_alias=True, exclude_none=True).encode()
