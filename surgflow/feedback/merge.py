"""One batch of feedback messages -> durable effects (SPEC §3, §4).

:class:`BatchMerger` takes the records of one batch (any topics, any partitions) and the stream
positions the batch reaches, and makes it durable in this order:

1. videos: validate, register (probe + hash), or dead-letter (quarantining undecodable files);
2. parked events whose video is now registered, then the batch's inference and annotation
   events: validate against the video and its taxonomy, dead-letter, or park if the video is
   unknown;
3. dead letters are sent and acknowledged;
4. one dataset version per affected dataset (the store deduplicates by ``event_id`` and
   rebases if another writer published first);
5. tasks completed by applied annotations; then, against the new versions' human labels,
   open tasks closed whose range humans labelled, and the batch's new low-confidence tasks
   recorded in the ledger and sent unless humans labelled their range already;
6. parked events that were applied or dead-lettered are released.

Only after :meth:`BatchMerger.process` returns may the caller move its stream positions (see
:mod:`surgflow.feedback.checkpoint`): every step above is idempotent, so a crash anywhere
replays the batch to the same datasets, registry, parking lot and task ledger. What leaves on
Kafka (dead letters, tasks) is at-least-once: a replay may send a dead letter or a task again,
with the same source position or ``task_id`` to recognise it by.

A manifest's ``parked_events`` counts the events parked for videos not yet registered that can
be attributed to its dataset: inference events name their procedure; an annotation for an
unknown video cannot be attributed until the video arrives.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from surgflow.config import Settings
from surgflow.data.labels import LabelEvent, check_event
from surgflow.data.privacy import PRIVACY, PRIVACY_LABELS
from surgflow.data.registry import VideoRecord, VideoRegistry
from surgflow.data.taxonomy import ProcedureCatalog, dataset_takes, is_track
from surgflow.data.versions import DatasetStore
from surgflow.errors import BadInput, VideoError
from surgflow.feedback import parking as parking_mod
from surgflow.feedback.dlq import DeadLetter
from surgflow.feedback.events import HoldRule
from surgflow.feedback.parking import ParkedEvent, ParkingLot
from surgflow.feedback.phases import Tally
from surgflow.feedback.schemas import (
    AnnotationEvent,
    FeedbackTask,
    InferenceEvent,
    VideoEvent,
    WireError,
    decode,
    encode,
)
from surgflow.feedback.tasks import TaskLedger, decide, tasks_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """What the merge needs of one Kafka message; ``topic`` is without the prefix."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class RunReport(Tally):
    """Counts of one or more batches (``feedback run --json``, SPEC §6), and where their time
    went (:mod:`surgflow.feedback.phases`)."""

    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    parked: int = 0
    tasks_created: int = 0
    versions_created: list[dict] = field(default_factory=list)
    #: per new version: dataset, version, parent, videos, labelled_frames, new_sources
    versions: list[dict] = field(default_factory=list)

    def add(self, other: RunReport) -> None:
        for name in ("consumed", "applied", "duplicates", "dead_lettered", "parked",
                     "tasks_created"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.versions_created.extend(other.versions_created)
        self.versions.extend(other.versions)
        self.add_tally(other)

    def as_json(self) -> dict:
        """The ``--once`` document (SPEC §6)."""
        return {
            "consumed": self.consumed, "applied": self.applied, "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered, "parked": self.parked,
            "tasks_created": self.tasks_created,
            "versions_created": [dict(v) for v in self.versions_created],
        }

    def as_follow_json(self) -> dict:
        """Follow mode's document: :meth:`as_json`, then the counts and ``time_s``."""
        return self.as_json() | dict(self.counts) | {
            "time_s": {k: round(v, 3) for k, v in self.time_s.items()}}


@dataclass
class _Plan:
    videos: dict[str, dict[str, VideoRecord]] = field(default_factory=lambda: defaultdict(dict))
    video_events: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    events: dict[str, list[LabelEvent]] = field(default_factory=lambda: defaultdict(list))
    tasks: list[FeedbackTask] = field(default_factory=list)
    completions: list[tuple[str, str]] = field(default_factory=list)
    release: list[ParkedEvent] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: when the batch is merged: the creation time of the tasks it asks for
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


class BatchMerger:
    """Applies batches of records to the registry, the dataset store and the task ledger.

    ``send`` is how dead letters and tasks leave: ``send(topic, value, key, headers)`` for an
    unprefixed topic, and ``flush()`` that returns once everything sent is acknowledged.

    ``hold`` says which videos may not be shown to people yet (``hold(video_ids)`` →
    ``{video_id: reason}``): their new tasks are recorded but held off the topic, and every
    batch sends the held tasks whose video has been cleared since. The command line and the
    flows pass the privacy rule (:func:`surgflow.serving.screening.privacy_hold`); None holds
    nothing.
    """

    def __init__(self, settings: Settings, sender, hold: HoldRule | None = None):
        self.settings = settings
        self.sender = sender
        self.hold = hold
        self.registry = VideoRegistry(settings.home, settings.resolved_video_roots())
        self.catalog = ProcedureCatalog(settings.home)
        self.store = DatasetStore(settings.home)
        self.parking = ParkingLot(settings.home)
        self.ledger = TaskLedger(settings.home)
        self._resent_unpublished = False
        # Registered videos never change (records are published once, never rewritten), so
        # found records are cached for the consumer's life; misses are always looked up again.
        self._videos: dict[str, VideoRecord] = {}
        self._labels: dict[str, tuple[str, ...]] = {}

    def process(self, records: list[Record], positions: dict[str, int]) -> RunReport:
        """Make one batch durable; ``positions`` go into every new manifest."""
        started = time.perf_counter()
        report, plan = RunReport(consumed=len(records)), _Plan()
        self._labels.clear()  # a procedure may gain labels between batches
        videos = [r for r in records if r.topic == "videos"]
        labels = [r for r in records if r.topic != "videos"]
        for r in videos:
            self._video(r, plan)
        for video_id in self.parking.videos():
            if self._find(video_id) is not None:
                for parked in self.parking.parked(video_id):
                    rec = Record(parked.topic, parked.partition, parked.offset, None, parked.value)
                    self._label(rec, plan, report, parked)
        for r in labels:
            self._label(r, plan, report, None)
        report.time_s["decode"] = time.perf_counter() - started

        for dead in plan.dead:
            self.sender.send("dlq", dead.value, dead.key, dead.headers())
        if plan.dead:
            self.sender.flush()
        report.dead_lettered = len(plan.dead)

        for dataset in sorted(set(plan.videos) | set(plan.events)):
            self._commit(dataset, plan, positions, report)

        self._tasks(plan, report)
        for parked in plan.release:
            self.parking.release(parked)
        t = report.time_s
        t["commit"] = time.perf_counter() - started - t["decode"] - t["merge"] - t["races"]
        return report

    def unparkable(self) -> bool:
        """Whether some parked event's video is registered by now (it can be applied)."""
        return any(self._find(v) is not None for v in self.parking.videos())

    def releasable(self) -> bool:
        """Whether a held task's video has been cleared since (a batch would send it)."""
        if self.hold is None:
            return False
        waiting = self.ledger.held()
        return bool(waiting) and bool(
            {t.video_id for t in waiting} - set(self.hold(sorted({t.video_id
                                                                  for t in waiting}))))

    # ---- videos ----------------------------------------------------------------------------

    def _video(self, r: Record, plan: _Plan) -> None:
        try:
            event = decode(r.topic, r.value)
            assert isinstance(event, VideoEvent)
        except WireError as e:
            plan.dead.append(self._dead(r, str(e)))
            return
        try:
            result = self.registry.register(
                event.uri, event.procedure, event.source, video_id=event.video_id,
                recorded_at=event.recorded_at,
            )
        except VideoError as e:
            self.registry.quarantine(event.uri, str(e), event.video_id, event.event_id)
            plan.dead.append(self._dead(r, f"video {event.video_id!r} cannot be registered: {e}"))
            return
        except BadInput as e:  # unsafe uri, unknown procedure, conflicting content, bad id
            plan.dead.append(self._dead(r, f"video {event.video_id!r} rejected: {e}"))
            return
        except OSError as e:  # e.g. unreadable: retrying would block the partition forever
            reason = f"video {event.video_id!r} cannot be read: {e.strerror or e} ({event.uri})"
            self.registry.quarantine(event.uri, reason, event.video_id, event.event_id)
            plan.dead.append(self._dead(r, reason))
            return
        video = result.record
        self._videos[video.video_id] = video
        plan.videos[video.procedure][video.video_id] = video
        plan.video_events[video.procedure].append(video.video_id)

    def _find(self, video_id: str) -> VideoRecord | None:
        try:
            return self._video_record(video_id)
        except BadInput:
            return None

    def _video_record(self, video_id: str) -> VideoRecord | None:
        found = self._videos.get(video_id)
        if found is None:
            found = self.registry.find(video_id)
            if found is not None:
                self._videos[video_id] = found
        return found

    def _procedure_labels(self, procedure: str) -> tuple[str, ...]:
        labels = self._labels.get(procedure)
        if labels is None:
            labels = self._labels[procedure] = self.catalog.get(procedure).labels
        return labels

    # ---- inference and annotations ---------------------------------------------------------

    def _label(self, r: Record, plan: _Plan, report: RunReport, parked: ParkedEvent | None):
        def reject(reason: str) -> None:
            plan.dead.append(self._dead(r, reason))
            if parked is not None:
                plan.release.append(parked)

        try:
            event = decode(r.topic, r.value)
        except WireError as e:
            return reject(str(e))
        assert isinstance(event, InferenceEvent | AnnotationEvent)
        procedure = event.procedure if isinstance(event, InferenceEvent) else None
        if procedure is not None:
            try:
                self._procedure_labels(procedure)
            except BadInput as e:
                return reject(f"event {event.event_id!r}: {e}")
        try:
            video = self._video_record(event.video_id)
        except BadInput as e:
            return reject(f"event {event.event_id!r}: {e}")
        if video is None:
            if parked is None:
                entry = parking_mod.make(event.video_id, event.event_id, r.topic, r.partition,
                                         r.offset, r.value or b"", procedure)
                if self.parking.park(entry):
                    report.parked += 1
            return None
        if procedure is not None and not dataset_takes(procedure, video.procedure):
            return reject(f"event {event.event_id!r} names procedure {procedure!r}, but video "
                          f"{video.video_id!r} is a {video.procedure!r} video")
        parts = {dataset: to_label_event(part, r.partition, r.offset)
                 for dataset, part in _by_dataset(event, video.procedure).items()}
        for dataset, label_event in parts.items():
            try:
                check_event(label_event, self._procedure_labels(dataset), video.num_frames)
            except BadInput as e:
                return reject(str(e))
        for dataset, label_event in parts.items():
            plan.events[dataset].append(label_event)
            plan.videos[dataset][video.video_id] = video
        if isinstance(event, InferenceEvent):
            if not is_track(event.procedure):
                plan.tasks.extend(tasks_for(event, self.settings.feedback_confidence_threshold,
                                            plan.now))
        elif event.task_id:
            plan.completions.append((event.task_id, event.event_id))
        if parked is not None:
            plan.release.append(parked)
        return None

    def _dead(self, r: Record, reason: str) -> DeadLetter:
        return DeadLetter(topic=self.settings.topic(r.topic), partition=r.partition,
                          offset=r.offset, value=r.value, key=r.key, reason=reason)

    # ---- versions and tasks ----------------------------------------------------------------

    def _commit(self, dataset: str, plan: _Plan, positions: dict[str, int],
                report: RunReport) -> None:
        video_events = plan.video_events.get(dataset, [])
        in_dataset: set[str] = set()
        if video_events and self.store.latest_version(dataset) is not None:
            in_dataset = set(self.store.find_videos(dataset, video_events))
        released = sum(1 for p in plan.release if p.procedure == dataset)
        result = self.store.commit(
            dataset, videos=list(plan.videos[dataset].values()),
            events=plan.events.get(dataset, []), offsets=positions,
            parked_events=max(0, self.parking.count(dataset) - released),
            checked=True,  # every event passed check_event in _label
        )
        # A video can join its dataset through its video event or through a label event that
        # names it (another consumer of the group may hold the video event); count it once.
        new_from_events = len(set(video_events) - in_dataset)
        report.time_s["merge"] += result.build_s
        report.time_s["races"] += result.race_s
        report.counts["lost_races"] += result.retries
        report.counts["carried"] += result.carried
        report.counts["rebuilt"] += result.rebuilt
        report.applied += result.applied + result.videos_added
        report.duplicates += result.duplicates + len(video_events) - new_from_events
        if result.version is None:
            return
        report.versions_created.append({"dataset": dataset, "version": result.version})
        manifest = self.store.manifest(dataset, result.version)
        parent = self.store.manifest(dataset, result.parent) if result.parent else None
        old_sources = set(parent.sources) if parent else set()
        report.versions.append({
            "dataset": dataset, "version": result.version, "parent": result.parent,
            "videos": manifest.videos, "labelled_frames": sum(manifest.label_frames.values()),
            "new_sources": sorted(set(manifest.sources) - old_sources),
            "fingerprint": manifest.fingerprint,
        })
        log.info("dataset %s: version %d (%d events applied, %d duplicates)",
                 dataset, result.version, result.applied, result.duplicates)

    def _tasks(self, plan: _Plan, report: RunReport) -> None:
        now = datetime.now(UTC)
        for task_id, event_id in plan.completions:
            self.ledger.complete(task_id, event_id, now)
        videos: dict[str, set[str]] = defaultdict(set)
        annotated: set[str] = set()
        for t in plan.tasks:
            videos[t.procedure].add(t.video_id)
        for dataset, events in plan.events.items():
            if is_track(dataset):  # tasks ask for phases; the privacy track raises none
                continue
            for e in events:
                if e.provenance == "human":
                    videos[dataset].add(e.video_id)
                    annotated.add(e.video_id)
        # The versions just written hold every human label, this batch's included, so the
        # decision does not depend on the order annotations and inference events arrived in.
        intervals = {}
        for dataset, ids in videos.items():
            intervals |= self.store.find_intervals(dataset, sorted(ids))
        decision = decide(plan.tasks, self.ledger.open_for(annotated), intervals)
        for task_id, event_id in decision.close:
            self.ledger.close(task_id, event_id, now)

        to_send = [t for t in decision.create if self.ledger.create(t)]
        report.tasks_created += len(to_send)
        if self.hold is not None:
            to_send = self._held_back(to_send)
        if not self._resent_unpublished:
            # After a crash, tasks recorded but never acknowledged on the topic go out again.
            known = {t.task_id for t in to_send}
            to_send += [t for t in self.ledger.unpublished() if t.task_id not in known]
            self._resent_unpublished = True
        for task in to_send:
            self.sender.send("feedback-tasks", encode(task), task.video_id.encode(), [])
        if to_send:
            self.sender.flush()
            for task in to_send:
                self.ledger.mark_published(task.task_id)

    def _held_back(self, new: list[FeedbackTask]) -> list[FeedbackTask]:
        """``new`` without the tasks of held videos (recorded as held), plus the held tasks
        whose video is cleared now."""
        waiting = self.ledger.held()
        held = self.hold(sorted({t.video_id for t in [*new, *waiting]})) if new or waiting \
            else {}
        for task in new:
            if task.video_id in held:
                self.ledger.hold(task.task_id, held[task.video_id])
        released = [t for t in waiting if t.video_id not in held]
        for task in released:
            self.ledger.unhold(task.task_id)
        kept = [t for t in new if t.video_id not in held]
        if len(kept) < len(new) or released:
            log.info("feedback tasks: %d held until their videos are cleared for people, %d "
                     "released", len(new) - len(kept), len(released))
        return kept + released


def _by_dataset(event: InferenceEvent | AnnotationEvent,
                video_procedure: str) -> dict[str, InferenceEvent | AnnotationEvent]:
    """The parts of ``event`` per dataset it labels: an inference event labels the procedure
    it names; an annotation's privacy labels (InBody, OutOfBody) go to the privacy track and
    the rest to its video's procedure, under the one event id."""
    if isinstance(event, InferenceEvent):
        return {event.procedure: event}
    track = [s for s in event.segments if s.label in PRIVACY_LABELS]
    if not track:
        return {video_procedure: event}
    phases = [s for s in event.segments if s.label not in PRIVACY_LABELS]
    parts = {PRIVACY: event.model_copy(update={"segments": tuple(track)})}
    if phases:
        parts[video_procedure] = event.model_copy(update={"segments": tuple(phases)})
    return parts


def to_label_event(event: InferenceEvent | AnnotationEvent, partition: int,
                   offset: int) -> LabelEvent:
    """The store's view of a wire event at a stream position."""
    if isinstance(event, AnnotationEvent):
        return LabelEvent.of_checked(
            event.event_id, event.video_id, "human", event.produced_at, partition, offset,
            ((s.start_frame, s.end_frame, s.label, None) for s in event.segments),
            event.task_id)
    return LabelEvent.of_checked(
        event.event_id, event.video_id, "model", event.produced_at, partition, offset,
        ((s.start_frame, s.end_frame, s.label, s.confidence) for s in event.segments))
