"""Fleet mode: members of one consumer group share the ``videos`` topic and analyse each video
once, publishing its inference event (SPEC §8 ``--consume``).

One record at a time: on a record the member pauses every partition it holds and hands the
analysis to a worker thread, and keeps calling ``poll`` (which returns nothing while paused) so
that its heartbeats and the max-poll-interval clock keep running: a video that takes longer than
``max_poll_interval_ms`` does not get the member evicted and the video analysed twice. When the
analysis is done the event (or the dead letter) is sent and acknowledged, and only then is the
record's offset committed; then the partitions are resumed.

A rebalance that revokes the partition of the record in hand waits for its analysis to finish,
sends its outcome and queues the offset commit before letting go (a listener may not block on the
consumer), so the next owner normally starts after it; if the commit lands late, the next owner
analyses the video again and sends the same event id. The group's rebalance timeout (the max poll
interval, by default the analysis time limit plus a minute) covers the wait.
Partitions assigned while an analysis runs are paused too. A record that cannot be analysed (not
a video event, an unsafe or missing uri, an undecodable or too-long video, no production model)
goes to the DLQ with the reason, with the same headers as the feedback flow's dead letters; the
consumer goes on. If the broker refuses the event, the offset is not committed and the record is
read again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from surgflow.config import Settings
from surgflow.errors import BadInput, BrokerError
from surgflow.feedback import broker
from surgflow.feedback.dlq import DeadLetter
from surgflow.feedback.schemas import WireError, decode
from surgflow.serving.analysis import analyse
from surgflow.serving.events import EventSink
from surgflow.serving.pool import ModelPool

log = logging.getLogger(__name__)

POLL_MS = 200
#: after the broker refused an event, wait this long before reading the record again
RETRY_PAUSE_S = 2.0


@dataclass
class FleetReport:
    """What one member did: video ids analysed and dead-lettered, rebalances seen."""

    analysed: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    revocations: int = 0  # rebalances that took partitions away from this member
    partitions: list[int] = field(default_factory=list)  # held now

    def as_dict(self) -> dict[str, Any]:
        return {"analysed": len(self.analysed), "dead_lettered": len(self.dead_lettered),
                "revocations": self.revocations}


@dataclass
class _Job:
    record: Any
    tp: Any
    future: Future
    done: bool = False


@dataclass(frozen=True)
class _Result:
    video_id: str | None
    event: dict | None = None
    letter: DeadLetter | None = None


class Fleet:
    """One member of the inference fleet; :meth:`run` consumes until ``stop`` is set."""

    def __init__(self, settings: Settings, pool: ModelPool, sink: EventSink, *,
                 group_id: str | None = None, instance_id: str | None = None,
                 max_poll_interval_ms: int | None = None, attempts: int = broker.ATTEMPTS):
        self.settings, self.pool, self.sink = settings, pool, sink
        self.bootstrap = broker.bootstrap(settings)
        self.topic = settings.topic("videos")
        self.group_id = group_id or f"{settings.topic_prefix}inference-fleet"
        self.instance_id = instance_id
        self.max_poll_interval_ms = max_poll_interval_ms or int(
            settings.serve_max_analysis_s * 1000 + 60_000)
        self.attempts = attempts
        self.report = FleetReport()
        self._job: _Job | None = None

    def _consumer(self):
        from kafka import KafkaConsumer

        session = self.settings.kafka_session_timeout_ms
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap, "group_id": self.group_id,
            "enable_auto_commit": False, "auto_offset_reset": "earliest",
            "session_timeout_ms": session, "heartbeat_interval_ms": max(500, session // 6),
            "max_poll_interval_ms": self.max_poll_interval_ms, "max_poll_records": 1,
            "bootstrap_timeout_ms": broker.BOOTSTRAP_TIMEOUT_MS,
            "client_id": "surgflow-inference-fleet",
        }
        if self.instance_id:
            config["group_instance_id"] = self.instance_id
        return broker.retry(f"connecting a consumer to Kafka at {self.bootstrap}",
                            lambda: KafkaConsumer(**config), attempts=self.attempts)

    def run(self, *, stop: threading.Event | None = None, idle_exit_s: float | None = None,
            on_result: Callable[[str | None, str], None] | None = None) -> FleetReport:
        """Consume as a member of the group until ``stop`` is set or, with ``idle_exit_s``,
        no record arrived for that long. ``on_result(video_id, "analysed"|"dead_lettered")``
        sees each record once its outcome is acknowledged and committed."""
        from kafka import ConsumerRebalanceListener

        stop = stop or threading.Event()
        self._on_result = on_result
        consumer = self._consumer()
        fleet = self
        executor = ThreadPoolExecutor(1, thread_name_prefix="surgflow-fleet-analysis")

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                if revoked:
                    fleet.report.revocations += 1
                fleet.report.partitions = []
                job = fleet._job
                if job is not None and not job.done and job.tp in set(revoked):
                    log.info("partition %s:%d revoked while analysing; finishing first",
                             job.tp.topic, job.tp.partition)
                    # on kafka-python's network thread: the commit is sent, not waited for
                    fleet._finish(consumer, job, wait_commit=False)

            def on_partitions_assigned(self, assigned):
                if fleet._job is not None and assigned:
                    consumer.pause(*assigned)
                fleet.report.partitions = sorted(tp.partition for tp in assigned)
                log.info("fleet member assigned %d partitions of %s", len(assigned),
                         fleet.topic)

        try:
            consumer.subscribe([self.topic], listener=Listener())
            idle_since = time.monotonic()
            while not stop.is_set():
                got = consumer.poll(timeout_ms=POLL_MS, max_records=1)
                records = [r for batch in got.values() for r in batch]
                if not records:
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                for record in records:
                    self._handle(consumer, executor, record)
                idle_since = time.monotonic()
            return self.report
        finally:
            executor.shutdown(wait=True)
            consumer.close(autocommit=False)

    def _handle(self, consumer, executor, record) -> None:
        from kafka import TopicPartition

        tp = TopicPartition(record.topic, record.partition)
        consumer.pause(*consumer.assignment())
        job = _Job(record, tp, executor.submit(self._process, record))
        self._job = job
        try:
            while not job.future.done():
                # keeps the membership alive; paused partitions return nothing
                for batch in consumer.poll(timeout_ms=POLL_MS).values():
                    if batch:  # assigned between a pause and a fetch: read it again later
                        first = batch[0]
                        back = TopicPartition(first.topic, first.partition)
                        consumer.seek(back, first.offset)
                        consumer.pause(back)
            if not job.done:
                self._finish(consumer, job)
        finally:
            self._job = None
            consumer.resume(*consumer.paused())

    def _process(self, record) -> _Result:
        """Decode and analyse one record (in the worker thread); never raises."""
        key = record.key.decode("utf-8", "replace") if record.key else None
        try:
            event = decode("videos", record.value)
        except WireError as e:
            return self._dead(record, key, str(e))
        try:
            outcome = analyse(self.pool, self.settings, video_id=event.video_id, uri=event.uri,
                              procedure=event.procedure)
        except Exception as e:  # every failure of one video is that video's dead letter
            if not isinstance(e, BadInput):  # a defect, not the video: worth a traceback
                log.exception("analysing video %s failed", event.video_id)
            return self._dead(record, event.video_id,
                              f"video {event.video_id!r} cannot be analysed: {e}")
        return _Result(event.video_id, event=outcome.event)

    def _dead(self, record, video_id: str | None, reason: str) -> _Result:
        letter = DeadLetter(topic=self.topic[len(self.settings.topic_prefix):],
                            partition=record.partition, offset=record.offset,
                            value=record.value, key=record.key, reason=reason)
        return _Result(video_id, letter=letter)

    def _finish(self, consumer, job: _Job, wait_commit: bool = True) -> None:
        """Send the outcome, wait for its acknowledgement, then commit the record's offset.

        In a rebalance listener (kafka-python's network thread, where a blocking consumer call
        raises) ``wait_commit`` is False: the commit is queued ahead of the group's rejoin and
        a failure is logged, as a failed commit is here.
        """
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        result: _Result = job.future.result()
        job.done = True
        try:
            if result.event is not None:
                self.sink.inference(result.event)
            else:
                self.sink.dead_letter(result.letter)
        except BrokerError as e:
            log.error("publishing the outcome of %s failed (%s); reading it again",
                      result.video_id, e)
            consumer.seek(job.tp, job.record.offset)
            time.sleep(RETRY_PAUSE_S)
            return
        offsets = {job.tp: OffsetAndMetadata(job.record.offset + 1, "", -1)}

        def failed(e) -> None:
            # the event is out; a member that reads the record again sends the same event id
            log.warning("committing %s:%d@%d failed: %s", job.tp.topic, job.tp.partition,
                        job.record.offset, e)

        try:
            if wait_commit:
                consumer.commit(offsets)
            else:
                consumer.commit_async(offsets, callback=lambda _, result: (
                    failed(result) if isinstance(result, Exception) else None))
        except (KafkaError, AssertionError, ValueError) as e:
            failed(e)
        if result.event is not None:
            self.report.analysed.append(result.video_id or "")
            outcome = "analysed"
        else:
            self.report.dead_lettered.append(result.video_id or "")
            log.warning("dead-lettered %s:%d@%d: %s", job.tp.topic, job.tp.partition,
                        job.record.offset, result.letter.reason)
            outcome = "dead_lettered"
        if self._on_result is not None:
            self._on_result(result.video_id, outcome)
