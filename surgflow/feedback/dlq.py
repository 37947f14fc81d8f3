"""The dead-letter queue (SPEC §3): bad messages with their reason, and reading them back.

A dead letter carries the original bytes as its value and four headers: ``surgflow.error`` (a
readable reason), ``surgflow.source.topic``, ``surgflow.source.partition`` and
``surgflow.source.offset``. The key is the source message's key, so a video's dead letters stay
together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from surgflow.feedback import broker

ERROR = "surgflow.error"
SOURCE_TOPIC = "surgflow.source.topic"
SOURCE_PARTITION = "surgflow.source.partition"
SOURCE_OFFSET = "surgflow.source.offset"
MAX_REASON = 2000


@dataclass(frozen=True)
class DeadLetter:
    """One bad message: where it came from, its bytes and why it was rejected."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None
    reason: str

    def headers(self) -> list[tuple[str, bytes]]:
        reason = " ".join(self.reason.split())[:MAX_REASON]
        return [
            (ERROR, reason.encode()),
            (SOURCE_TOPIC, self.topic.encode()),
            (SOURCE_PARTITION, str(self.partition).encode()),
            (SOURCE_OFFSET, str(self.offset).encode()),
        ]

    def as_dict(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "reason": self.reason,
                "value": self.value.decode("utf-8", "replace") if self.value is not None else None}


def from_record(record) -> DeadLetter:
    """Decode a message read from the DLQ topic back into a DeadLetter."""
    h = {k: v.decode("utf-8", "replace") for k, v in (record.headers or [])}
    return DeadLetter(
        topic=h.get(SOURCE_TOPIC, ""), partition=int(h.get(SOURCE_PARTITION, -1)),
        offset=int(h.get(SOURCE_OFFSET, -1)), value=record.value, key=record.key,
        reason=h.get(ERROR, ""),
    )


def read_all(bootstrap_servers: str, topic: str, timeout_s: float = 5.0) -> list[DeadLetter]:
    """Every dead letter in ``topic`` (the full DLQ topic name), oldest first per partition."""
    return [from_record(r) for r in read_records(bootstrap_servers, topic, timeout_s)]


def read_records(bootstrap_servers: str, topic: str, timeout_s: float = 5.0) -> list:
    """Every record in ``topic`` as kafka-python records, oldest first per partition."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = broker.retry(
        f"connecting a consumer to Kafka at {bootstrap_servers}",
        lambda: KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                              bootstrap_timeout_ms=broker.BOOTSTRAP_TIMEOUT_MS),
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
            consumer.position(tp) < ends[tp] for tp in tps
        ):
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
        # The embedded broker may report an end offset short of a multi-record batch; one more
        # poll picks up anything after it.
        for records in consumer.poll(timeout_ms=200).values():
            out.extend(records)
        return out
    finally:
        consumer.close()
