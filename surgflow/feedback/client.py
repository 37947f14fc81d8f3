"""Typed publishers for the input topics (SPEC §3): what producers outside surgflow use.

Every message is validated against its wire schema before it is sent, so a producer finds out
about a bad message at once instead of from the dead-letter queue. Messages are keyed by
``video_id`` (one video's events stay in order on one partition) and sent with ``acks="all"``;
:meth:`Publisher.flush` waits until every sent message is acknowledged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from surgflow.config import Settings
from surgflow.errors import BrokerError
from surgflow.feedback import broker
from surgflow.feedback.schemas import (
    INPUT_TOPICS,
    KIND_TOPIC,
    AnnotationEvent,
    InferenceEvent,
    VideoEvent,
    WireError,
    encode,
    validate,
)

log = logging.getLogger(__name__)

ALL_TOPICS = (*INPUT_TOPICS, "feedback-tasks", "dlq")


def make_producer(bootstrap_servers: str, attempts: int = broker.ATTEMPTS, **config: Any):
    """A kafka-python producer with surgflow's durability settings, connected with retries."""
    from kafka import KafkaProducer

    settings = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "retries": 5,
        "linger_ms": 5,
        "max_block_ms": 15_000,
        "bootstrap_timeout_ms": broker.BOOTSTRAP_TIMEOUT_MS,
        "client_id": "surgflow-producer",
    } | config
    return broker.retry(f"connecting a producer to Kafka at {bootstrap_servers}",
                        lambda: KafkaProducer(**settings), attempts=attempts)


class Publisher:
    """Sends validated events to the prefixed topics; create with :meth:`from_settings`."""

    def __init__(self, bootstrap_servers: str, topic_prefix: str, partitions: int,
                 attempts: int = broker.ATTEMPTS):
        self.bootstrap_servers = bootstrap_servers
        self.prefix = topic_prefix
        broker.ensure_topics(bootstrap_servers, [topic_prefix + t for t in ALL_TOPICS],
                             partitions, attempts=attempts)
        self._producer = make_producer(bootstrap_servers, attempts=attempts)
        self._pending: list = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Publisher:
        return cls(broker.bootstrap(settings), settings.topic_prefix, settings.topic_partitions)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def video(self, event: VideoEvent | Mapping[str, Any]) -> VideoEvent:
        return self._send("videos", event)  # type: ignore[return-value]

    def inference(self, event: InferenceEvent | Mapping[str, Any]) -> InferenceEvent:
        return self._send("inference", event)  # type: ignore[return-value]

    def annotation(self, event: AnnotationEvent | Mapping[str, Any]) -> AnnotationEvent:
        return self._send("annotations", event)  # type: ignore[return-value]

    def publish(self, kind: str, event: Mapping[str, Any]):
        """Send one event of ``kind`` (video, inference or annotation), validated first."""
        topic = KIND_TOPIC.get(kind)
        if topic is None:
            raise WireError(f"unknown event kind {kind!r}; known: {', '.join(KIND_TOPIC)}")
        return self._send(topic, event)

    def _send(self, topic: str, event: Any):
        obj = event if isinstance(event, Mapping) else json.loads(encode(event))
        model = validate(topic, dict(obj))
        value = json.dumps(dict(obj), default=_json_default).encode()
        self.send_raw(topic, value, key=model.video_id)
        return model

    def send_raw(self, topic: str, value: bytes | None, key: str | bytes | None = None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send bytes as they are to a prefixed topic (dead letters keep their key's bytes)."""
        future = self._producer.send(
            self.prefix + topic, value=value,
            key=key.encode() if isinstance(key, str) else key, headers=list(headers or []),
        )
        self._pending.append(future)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait until every sent message is acknowledged; return how many were sent."""
        from kafka.errors import KafkaError

        pending, self._pending = self._pending, []
        try:
            self._producer.flush(timeout=timeout_s)
            for f in pending:
                f.get(timeout=timeout_s)
        except KafkaError as e:
            raise BrokerError(
                f"sending to Kafka at {self.bootstrap_servers} failed: {e}"
            ) from e
        return len(pending)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._producer.close(timeout=5)


def _json_default(o: Any) -> Any:
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
