"""The feedback consumer: read the input topics in batches and merge them (SPEC §3-§6).

Two modes:

- :meth:`FeedbackConsumer.run_once` assigns every partition of the input topics itself (no group
  join, so no rebalance wait), seeks to the stored positions, reads up to the end offsets seen at
  start and merges everything as one batch: one new version per affected dataset.
- :meth:`FeedbackConsumer.follow` joins the consumer group, so several consumers share the
  partitions, and commits a batch every ``max_events`` events or ``max_seconds`` seconds,
  whichever comes first, or as soon as it has read all there is. On every assignment it seeks
  to the stored positions; on a revocation it drops what it holds of the revoked partitions
  (not merged, so the checkpoint has not passed it: their next owner reads it again).

A version has a fixed cost (reading its parent's runs, writing and syncing its files) however
few events it holds. So under load follow mode drains what the broker has, up to
:data:`FOLLOW_MAX_EVENTS` events per version, and that bound amortises the cost. Once it has
read everything (a poll finds nothing within :data:`POLL_MS`) it merges what it holds; the
time bound (:data:`FOLLOW_MAX_SECONDS`) caps an event's latency when records trickle in
without a pause. Consumers of one group hold disjoint partitions, hence disjoint videos
(the message key), so their versions commute: one that loses the race to publish is carried
onto the winner's version by the store, not rebuilt (see
:meth:`~surgflow.data.versions.DatasetStore.commit`).

Positions: the :class:`~surgflow.feedback.checkpoint.Checkpoint` is the resume point and only
moves after :meth:`BatchMerger.process` made a batch durable (versions written, dead letters
acknowledged, parked events on disk). Kafka's group offsets are committed afterwards, for lag
monitoring only; a failure to commit them is logged and ignored. Then each new version is
announced through the ``on_version`` callback, if one was given (:mod:`surgflow.feedback.events`).

The embedded broker (Tansu 0.6) reports a partition's end offset as the base offset of its last
record batch plus one, not as the offset after its last record. Reading continues to the end of
every record batch a fetch returns, so ``--once`` still reads everything up to the true end at
start, except when a follow-mode consumer left its position inside that last batch: the rest of
that batch is then read by the next run that sees a later end.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from types import SimpleNamespace
from typing import TYPE_CHECKING

from surgflow.config import Settings
from surgflow.errors import BrokerError
from surgflow.feedback import broker
from surgflow.feedback.checkpoint import Checkpoint, position_key
from surgflow.feedback.client import Publisher
from surgflow.feedback.events import HoldRule, VersionCallback
from surgflow.feedback.phases import Tally
from surgflow.feedback.schemas import INPUT_TOPICS

if TYPE_CHECKING:
    from surgflow.feedback.merge import BatchMerger, RunReport

log = logging.getLogger(__name__)

POLL_MS = 200
#: follow mode's polls while it loads the merge machinery (the join goes on meanwhile)
JOIN_POLL_MS = 20
MAX_POLL_RECORDS = 5000
#: follow mode's defaults: a version every this many events...
FOLLOW_MAX_EVENTS = 10_000
#: ...or this many seconds after the first event it holds, whichever comes first
FOLLOW_MAX_SECONDS = 2.0
#: --once gives up when no record arrives for this long while positions are short of the end
STALL_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while a batch is read and merged.

    A batch allocates tens of thousands of small objects that all stay alive until it is
    committed; the collector would rescan them over and over (measured: decoding and merging
    20,000 events ran three times faster without it). They are acyclic, so nothing leaks.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class FeedbackConsumer:
    """Consumes the input topics of ``settings`` into dataset versions; ``on_version`` is called
    with each new version once it is durable."""

    def __init__(self, settings: Settings, *, group_id: str | None = None,
                 attempts: int = broker.ATTEMPTS, on_version: VersionCallback | None = None,
                 hold: HoldRule | None = None):
        self.settings = settings
        self.on_version = on_version
        self.hold = hold
        self.attempts = attempts
        self.bootstrap = broker.bootstrap(settings)
        self.group_id = group_id or f"{settings.topic_prefix}feedback"
        self.topics = [settings.topic(t) for t in INPUT_TOPICS]
        # dead letters and tasks leave through it; creating it creates every topic
        self._publisher = Publisher(self.bootstrap, settings.topic_prefix,
                                    settings.topic_partitions, attempts=attempts)
        self.cluster_id = broker.cluster_id(self.bootstrap, attempts=attempts)
        self.checkpoint = Checkpoint(settings.home)

    @cached_property
    def merger(self) -> BatchMerger:
        # Imported on first use: it brings the dataset store (pyarrow, DuckDB), which a
        # follow-mode consumer loads while the broker holds its group join.
        from surgflow.feedback.merge import BatchMerger

        return BatchMerger(self.settings, SimpleNamespace(send=self._publisher.send_raw,
                                                          flush=self._publisher.flush),
                           hold=self.hold)

    def close(self) -> None:
        self._publisher.close()

    def __enter__(self) -> FeedbackConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- shared ----------------------------------------------------------------------------

    def _consumer(self, **extra):
        from kafka import KafkaConsumer

        config = {
            "bootstrap_servers": self.bootstrap, "group_id": self.group_id,
            "enable_auto_commit": False, "auto_offset_reset": "earliest",
            "session_timeout_ms": self.settings.kafka_session_timeout_ms,
            "heartbeat_interval_ms": max(500, self.settings.kafka_session_timeout_ms // 6),
            "max_poll_interval_ms": 600_000, "max_poll_records": MAX_POLL_RECORDS,
            "bootstrap_timeout_ms": broker.BOOTSTRAP_TIMEOUT_MS,
            "client_id": "surgflow-feedback",
        } | extra
        return broker.retry(f"connecting a consumer to Kafka at {self.bootstrap}",
                            lambda: KafkaConsumer(**config), attempts=self.attempts)

    def _unprefixed(self, topic: str) -> str:
        return topic[len(self.settings.topic_prefix):]

    def _seek_stored(self, consumer, tps) -> None:
        stored = self.checkpoint.positions(self.cluster_id)
        for tp in tps:
            pos = stored.get(position_key(tp.topic, tp.partition))
            if pos is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, pos)

    def _ends(self, consumer) -> dict[tuple[str, int], tuple[int, int]]:
        """``{(topic, partition): (beginning, end)}`` offsets of every input partition now."""
        tps = self._input_partitions(consumer)
        first, last = broker.retry("reading the offsets of the input partitions",
                                   lambda: (consumer.beginning_offsets(tps),
                                            consumer.end_offsets(tps)), attempts=self.attempts)
        return {(tp.topic, tp.partition): (first[tp], last[tp]) for tp in tps}

    def _backlog(self, ends: dict[tuple[str, int], tuple[int, int]]) -> dict[tuple[str, int], int]:
        """Records of each input partition past its stored position, as of ``ends``."""
        stored = self.checkpoint.positions(self.cluster_id)
        return {(topic, p): end - max(first, stored.get(position_key(topic, p), first))
                for (topic, p), (first, end) in ends.items()}

    def _merge(self, consumer, records: list, start: dict[str, int]) -> RunReport:
        """Make records durable, then move the checkpoint, then commit group offsets, then
        announce the new versions."""
        from surgflow.feedback.merge import Record

        t0 = time.perf_counter()
        positions = dict(start)
        batch = []
        for m in records:
            positions[position_key(m.topic, m.partition)] = max(
                m.offset + 1, positions.get(position_key(m.topic, m.partition), 0))
            batch.append(Record(self._unprefixed(m.topic), m.partition, m.offset, m.key, m.value))
        stored = self.checkpoint.positions(self.cluster_id)
        t1 = time.perf_counter()
        report = self.merger.process(batch, stored | positions)
        t2 = time.perf_counter()
        self.checkpoint.advance(self.cluster_id, positions)
        self._commit_group(consumer, positions)
        self._announce(report.versions)
        report.time_s["decode"] += t1 - t0
        report.time_s["commit"] += time.perf_counter() - t2
        report.counts["batches"] += 1
        return report

    def _announce(self, versions: list[dict]) -> None:
        if self.on_version is None:
            return
        for v in versions:
            try:
                self.on_version(v)
            except Exception as e:  # advisory: the version is durable and the stream goes on
                log.warning("could not announce %s@%s: %s", v["dataset"], v["version"], e,
                            exc_info=True)

    def _commit_group(self, consumer, positions: dict[str, int]) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        if not positions:
            return
        offsets = {}
        for key, off in positions.items():
            topic, _, part = key.rpartition(":")
            offsets[TopicPartition(topic, int(part))] = OffsetAndMetadata(off, "", -1)
        try:
            consumer.commit(offsets)
        except (KafkaError, AssertionError, ValueError) as e:
            log.warning("group offset commit (lag monitoring only) failed: %s", e)

    # ---- --once ----------------------------------------------------------------------------

    def run_once(self) -> RunReport:
        """Read every input partition up to its end offset at start; merge as one batch."""
        consumer = self._consumer()
        try:
            with _gc_paused():
                return self._merge(consumer, *self._read_to_end(consumer))
        finally:
            consumer.close(autocommit=False)

    def _input_partitions(self, consumer) -> list:
        """Every partition of the input topics, as kafka-python's ``TopicPartition``."""
        from kafka import TopicPartition

        tps = []
        for topic in self.topics:
            parts = broker.retry(f"reading partitions of {topic}",
                                 lambda t=topic: _partitions(consumer, t), attempts=self.attempts)
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        return tps

    def _read_to_end(self, consumer) -> tuple[list, dict[str, int]]:
        tps = self._input_partitions(consumer)
        consumer.assign(tps)
        self._seek_stored(consumer, tps)
        ends = broker.retry("reading end offsets", lambda: consumer.end_offsets(tps),
                            attempts=self.attempts)
        start = {position_key(tp.topic, tp.partition): consumer.position(tp) for tp in tps}
        records: list = []
        last_progress = time.monotonic()
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            got = consumer.poll(timeout_ms=POLL_MS)
            for batch in got.values():
                records.extend(batch)
            if got:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                short = {f"{tp.topic}:{tp.partition}": (consumer.position(tp), ends[tp])
                         for tp in tps if consumer.position(tp) < ends[tp]}
                raise BrokerError(f"no records arrived for {STALL_TIMEOUT_S:.0f}s while "
                                  f"partitions were short of their end offsets: {short}")
        records.sort(key=lambda m: (m.topic, m.partition, m.offset))
        return records, start

    # ---- follow mode -----------------------------------------------------------------------

    def follow(
        self,
        *,
        max_events: int = FOLLOW_MAX_EVENTS,
        max_seconds: float = FOLLOW_MAX_SECONDS,
        stop: threading.Event | None = None,
        on_batch: Callable[[RunReport], None] | None = None,
        idle_exit_s: float | None = None,
    ) -> RunReport:
        """Consume as a member of the group until ``stop`` is set (or idle for ``idle_exit_s``).

        A batch is merged when it holds ``max_events`` records, when its first record is
        ``max_seconds`` old, or when a poll finds no more records, whichever comes first;
        ``on_batch`` sees each batch's report.
        """
        from kafka import ConsumerRebalanceListener
        from kafka.coordinator.assignors.range import RangePartitionAssignor

        from surgflow.feedback.assignment import BacklogAssignor

        stop = stop or threading.Event()
        buffer: list = []
        first_at: list[float] = []
        ends: dict = {}
        assignor = BacklogAssignor(lambda: self._backlog(ends))
        consumer = self._consumer(partition_assignment_strategy=(assignor,
                                                                 RangePartitionAssignor))
        merger = self
        total = None  # set once the merge machinery is loaded, before any record is merged
        # time and counts since the last batch, which its report takes (feedback.phases)
        started = time.perf_counter()
        pending = _Pending()

        def flush() -> None:
            if not buffer:
                return
            with _gc_paused():
                report = merger._merge(consumer, buffer, {})
            buffer.clear()
            first_at.clear()
            pending.move_to(report)
            total.add(report)
            if on_batch is not None:
                on_batch(report)

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                if pending.assigned:  # not the (empty) revocation before the first join
                    pending.revoked_at = time.perf_counter()
                    pending.counts["revoked_records"] += _drop_revoked(buffer, first_at,
                                                                       revoked)

            def on_partitions_assigned(self, assigned):
                merger._seek_stored(consumer, list(assigned))
                now = time.perf_counter()
                if not pending.assigned:
                    pending.time_s["join"] += now - started
                    pending.assigned = True
                elif pending.revoked_at is not None:
                    pending.time_s["rebalances"] += now - pending.revoked_at
                    pending.counts["rebalances"] += 1
                pending.revoked_at = None
                log.info("assigned %d partitions", len(assigned))

        try:
            ends |= self._ends(consumer)  # the leader may not ask the broker while it assigns
            consumer.subscribe(self.topics, listener=Listener())
            with ThreadPoolExecutor(1, thread_name_prefix="surgflow-join") as pool:
                # The broker holds a group join for seconds (Kafka's initial rebalance delay;
                # here half the session timeout): the join starts in the background while
                # the merge machinery loads, instead of after it.
                loaded = threading.Event()
                joining = pool.submit(_poll_until, consumer, loaded, max_events)
                try:
                    from surgflow.feedback.merge import RunReport

                    total = RunReport()
                    self.merger  # noqa: B018 (loads it)
                finally:
                    loaded.set()
                for record in joining.result():
                    if not first_at:
                        first_at.append(time.monotonic())
                    buffer.append(record)
            idle_since = parked_checked = time.monotonic()
            while not stop.is_set():
                wait_ms = POLL_MS
                if first_at:  # never wait past the moment the batch in hand is due
                    left = first_at[0] + max_seconds - time.monotonic()
                    wait_ms = int(min(POLL_MS, max(0.0, left) * 1000))
                polled = time.perf_counter()
                got = consumer.poll(timeout_ms=wait_ms,
                                    max_records=max(1, max_events - len(buffer)))
                if pending.assigned:  # before the first assignment, polls are the join
                    pending.time_s["poll"] += time.perf_counter() - polled
                for batch in got.values():
                    if batch and not first_at:
                        first_at.append(time.monotonic())
                    buffer.extend(batch)
                if got:
                    idle_since = time.monotonic()
                full = len(buffer) >= max_events
                due = bool(first_at) and time.monotonic() - first_at[0] >= max_seconds
                # A poll that finds nothing more means the batch in hand is all there is for
                # now: holding it until ``max_seconds`` would only delay it.
                if full or due or not got:
                    flush()
                if not buffer and time.monotonic() - parked_checked >= max_seconds:
                    # A video can arrive while its feedback sits parked by another consumer of
                    # the group, or through `data ingest`: apply parked events without waiting
                    # for the next message.
                    parked_checked = time.monotonic()
                    # ...and send the held feedback tasks whose videos were cleared since
                    if self.merger.unparkable() or self.merger.releasable():
                        report = self._merge(consumer, [], {})
                        pending.move_to(report)
                        total.add(report)
                if idle_exit_s is not None and not buffer and (
                        time.monotonic() - idle_since > idle_exit_s):
                    break
            flush()
            pending.move_to(total)  # the polls after the last batch
            return total
        finally:
            consumer.close(autocommit=False)


class _Pending(Tally):
    """Follow mode's time and counts not yet in a batch's report; the rebalance listener
    writes to it from kafka-python's thread, the loop from its own."""

    def __init__(self):
        super().__init__()
        self.assigned = False
        self.revoked_at: float | None = None

    def move_to(self, report: Tally) -> None:
        report.add_tally(self)
        self.clear()


def _drop_revoked(buffer: list, first_at: list[float], revoked) -> int:
    """Drop the records of ``revoked`` partitions from a follow-mode batch; how many went.

    A rebalance listener runs on kafka-python's network thread, where a blocking consumer call
    (a commit) raises and a merge would hold up the heartbeats, so the batch is not merged
    there. The checkpoint has not passed the dropped records: whichever member is assigned
    their partitions reads them again. What is held of the partitions kept stays.
    """
    gone = {(tp.topic, tp.partition) for tp in revoked}
    kept = [m for m in buffer if (m.topic, m.partition) not in gone]
    dropped = len(buffer) - len(kept)
    if dropped:
        log.info("partitions revoked: %d records held of them are left to their next owner",
                 dropped)
        buffer[:] = kept
        if not buffer:
            first_at.clear()
    return dropped


def _poll_until(consumer, done: threading.Event, max_records: int) -> list:
    """Poll ``consumer`` in short steps until ``done`` is set; the records the polls returned.

    A poll drives the group join, so the join request is on the broker while ``done``'s
    setter works. Records come only if the join completed meanwhile."""
    got: list = []
    while not done.is_set() and len(got) < max_records:
        for batch in consumer.poll(timeout_ms=JOIN_POLL_MS,
                                   max_records=max_records - len(got)).values():
            got.extend(batch)
    return got


def _partitions(consumer, topic: str) -> set[int]:
    from kafka.errors import KafkaTimeoutError

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise KafkaTimeoutError(f"no partition metadata for topic {topic} yet")
    return parts


def run_feedback(
    settings: Settings,
    *,
    once: bool,
    max_events: int = FOLLOW_MAX_EVENTS,
    max_seconds: float = FOLLOW_MAX_SECONDS,
    stop: threading.Event | None = None,
    on_batch: Callable[[RunReport], None] | None = None,
    on_version: VersionCallback | None = None,
    group_id: str | None = None,
    hold: HoldRule | None = None,
) -> RunReport:
    """One feedback run, as ``feedback run`` and the feedback flow do it: a ``--once`` pass, or
    follow mode until ``stop`` is set. ``on_batch`` sees every batch once it is durable, and
    ``on_version`` every new dataset version (the versions follow mode writes when it applies
    parked events on its own included). ``hold``: which videos' tasks wait (see
    :class:`~surgflow.feedback.merge.BatchMerger`)."""
    with FeedbackConsumer(settings, group_id=group_id, on_version=on_version,
                          hold=hold) as consumer:
        if not once:
            return consumer.follow(max_events=max_events, max_seconds=max_seconds, stop=stop,
                                   on_batch=on_batch)
        report = consumer.run_once()
        if on_batch:
            on_batch(report)
        return report
