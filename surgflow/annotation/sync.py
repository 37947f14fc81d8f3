"""The annotation sync: feedback tasks out to Label Studio, annotators' corrections back.

One pass (:func:`sync`), safe to repeat and to interrupt anywhere:

1. **Tasks out.** Per procedure, one project (:meth:`LabelStudio.project`, its config from the
   taxonomy). Every open feedback task that Label Studio does not hold yet (tasks are found by
   ``data.surgflow_task_id``, so an import that crashed before anything was recorded is not
   repeated) becomes one task: its people media through a signed, expiring link, the
   production model's labels of the whole video as a prediction, the uncertain range marked.
   New tasks are imported most uncertain first and a "Most uncertain first" tab orders them
   all. A task surgflow has closed (other human labels cover it) is marked done there: surgflow
   submits the human labels that cover it as its annotation (so the task is labelled and
   leaves the queue) and its ``fix`` line says why; nothing on a closed task is sent back.
2. **Corrections back.** Every submitted or updated annotation (a skip is none) becomes one
   annotation event (:func:`surgflow.annotation.timeline.annotation_event`) on the annotations
   topic. The event id is derived from the annotation's id and revision, so the webhook (the
   fast path, :mod:`surgflow.annotation.bridge`) and this poll (the safe one) deliver the same
   event and the feedback flow applies it once. ``returned/<event_id>.json`` records what was
   sent, after the broker acknowledged it. A deleted annotation sends nothing and changes no
   dataset version.
3. **Problems back.** An event the feedback flow dead-lettered (an unknown label, overlapping
   regions, nothing in the task's range) has its reason written onto its Label Studio task's
   ``fix`` line, once, so the annotator sees what to correct; the corrected annotation is a
   new revision, hence a new event.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from surgflow.annotation import timeline
from surgflow.annotation.labelstudio import LabelStudio
from surgflow.annotation.links import MediaLinks
from surgflow.config import Settings
from surgflow.data.media import prepare_for_people
from surgflow.data.privacy import PRIVACY, PrivacyHold, PrivacyPolicy
from surgflow.data.ranges import covers
from surgflow.data.registry import VideoRegistry
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.data.versions import DatasetStore
from surgflow.errors import SurgflowError
from surgflow.feedback.schemas import FeedbackTask, WireError
from surgflow.feedback.tasks import TaskLedger
from surgflow.storage import json_bytes, locked, write_exclusive

log = logging.getLogger(__name__)

VIEW = "Most uncertain first"
WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
CLOSED_NOTE = "Closed in surgflow: other human labels already cover this range ({by})."


@dataclass
class SyncReport:
    """What one pass did (``surgflow annotate sync --json``)."""

    projects: dict[str, int] = field(default_factory=dict)
    tasks_sent: int = 0
    tasks_held: int = 0
    #: open tasks not sent because their video is not cleared for people (privacy)
    tasks_withheld: int = 0
    #: open tasks not sent because their whole range is blacked out: nobody could see it
    tasks_out_of_body: int = 0
    tasks_closed: int = 0
    links_renewed: int = 0
    annotations_returned: int = 0
    annotations_seen: int = 0
    problems_reported: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class ReturnLedger:
    """Annotation events sent back (``returned/``) and problems reported (``reported/``)."""

    def __init__(self, home: Path):
        self.root = Path(home) / "annotation" / "label-studio"

    def sent(self, event_id: str) -> bool:
        return (self.root / "returned" / f"{event_id}.json").exists()

    def mark_sent(self, event: dict[str, Any]) -> None:
        write_exclusive(self.root / "returned" / f"{event['event_id']}.json",
                        json_bytes(event["provenance"] | {"task_id": event["task_id"]}))

    def origin(self, event_id: str) -> dict[str, Any] | None:
        path = self.root / "returned" / f"{event_id}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def report(self, event_id: str, reason: str) -> bool:
        return write_exclusive(self.root / "reported" / f"{event_id}.json",
                               json_bytes({"reason": reason}))

    def reported(self, event_id: str) -> bool:
        return (self.root / "reported" / f"{event_id}.json").exists()

    def mark_closed(self, ls_task: int) -> None:
        """Recorded before surgflow annotates a closed task, so that annotation (arriving by
        webhook or poll) is never taken for a person's."""
        write_exclusive(self.root / "closed" / str(int(ls_task)), b"")

    def closed(self, ls_task: int) -> bool:
        return (self.root / "closed" / str(int(ls_task))).exists()


def annotator_of(client: LabelStudio, annotation: dict[str, Any]) -> str:
    user = annotation.get("completed_by")
    if isinstance(user, dict):
        user = user.get("id")
    return f"{timeline.SOURCE}:{client.user(int(user)) if user is not None else 'unknown'}"


def return_annotation(client: LabelStudio, publisher, ledger: ReturnLedger,
                      task: dict[str, Any], annotation: dict[str, Any]) -> dict | None:
    """Send one annotation of a surgflow task as an event unless it was sent; returns the
    event sent (None: a skip, not a surgflow task, or sent already). The caller flushes the
    publisher and then :meth:`ReturnLedger.mark_sent`."""
    data = task.get("data") or {}
    if annotation.get("was_cancelled") or "surgflow_task_id" not in data or \
            ledger.closed(int(task["id"])):
        return None
    event = timeline.annotation_event(annotation | {"task": task["id"]}, data,
                                      annotator_of(client, annotation))
    if ledger.sent(event["event_id"]):
        return None
    try:
        publisher.publish("annotation", event)
    except WireError:
        # sent as it is: the feedback flow dead-letters it with its reason, which the sync
        # then writes onto the task (one authority on the wire rules)
        publisher.send_raw("annotations", json_bytes(event), key=event["video_id"])
    return event


def sync(settings: Settings, client: LabelStudio, publisher, links: MediaLinks | None,
         policy: PrivacyPolicy, now: datetime | None = None) -> SyncReport:
    """One pass of the sync (see the module docstring); only tasks whose video ``policy``
    clears for people are sent."""
    now = now or datetime.now(UTC)
    report = SyncReport()
    home = settings.home
    ledger = ReturnLedger(home)
    by_procedure: dict[str, list[dict]] = {}
    for t in TaskLedger(home).list():
        by_procedure.setdefault(t["procedure"], []).append(t)
    for procedure, tasks in sorted(by_procedure.items()):
        labels = ProcedureCatalog(home).get(procedure).labels
        project = client.project(procedure, timeline.label_config(procedure, labels))
        pid = int(project["id"])
        report.projects[procedure] = pid
        client.ensure_view(pid, VIEW, ["tasks:data.confidence"])
        if links is not None:
            client.ensure_webhook(pid, links.webhook_url, WEBHOOK_ACTIONS,
                                  {"Authorization": f"Bearer {links.webhook_token}"})
        held = {t["data"].get("surgflow_task_id"): t for t in client.tasks(pid)}
        report.tasks_held += len(held)
        _send(settings, client, links, pid, tasks, held, report, policy)
        _close(settings, client, ledger, tasks, held, report)
        if links is not None:
            _renew(client, links, tasks, held, report, now)
        sent = []
        for task in held.values():
            for annotation in task.get("annotations") or ():
                report.annotations_seen += 1
                event = return_annotation(client, publisher, ledger, task, annotation)
                if event is not None:
                    sent.append(event)
        if sent:
            publisher.flush()
            for event in sent:
                ledger.mark_sent(event)
            report.annotations_returned += len(sent)
    return report


def _send(settings: Settings, client: LabelStudio, links: MediaLinks | None, project: int,
          tasks: list[dict], held: dict, report: SyncReport, policy: PrivacyPolicy) -> None:
    todo = [FeedbackTask.model_validate(t) for t in tasks
            if t["status"] == "open" and t["task_id"] not in held]
    if not todo:
        return
    if links is None:
        raise SurgflowError(
            "no annotation bridge answers to serve media to Label Studio: start the stack "
            "(`surgflow up`) or `surgflow annotate serve`, or set SURGFLOW_ANNOTATION_URL")
    registry = VideoRegistry(settings.home, settings.resolved_video_roots())
    store = DatasetStore(settings.home)
    procedure = todo[0].procedure
    video_ids = sorted({t.video_id for t in todo})
    intervals = (store.find_intervals(procedure, video_ids)
                 if store.latest_version(procedure) is not None else {})
    privacy = (store.find_intervals(PRIVACY, video_ids)
               if store.latest_version(PRIVACY) is not None else {})
    media: dict[str, timeline.Media | PrivacyHold] = {}
    blackout: dict[str, tuple[tuple[int, int], ...]] = {}
    payloads = []
    for task in sorted(todo, key=lambda t: (t.confidence, t.video_id, t.start_frame)):
        if task.video_id not in media:
            video = registry.get(task.video_id)
            try:
                proxy = prepare_for_people(settings.home, video, policy)
            except PrivacyHold as e:
                log.debug("%s", e)
                media[task.video_id] = e
            else:
                blackout[task.video_id] = proxy.spec.blackout
                media[task.video_id] = timeline.Media(
                    url=links.media_url(proxy), fps=proxy.fps, step=proxy.spec.step,
                    num_frames=proxy.num_frames, source_frames=video.num_frames)
        found = media[task.video_id]
        if isinstance(found, PrivacyHold):
            report.tasks_withheld += 1
            continue
        if covers(blackout[task.video_id], task.start_frame, task.end_frame):
            report.tasks_out_of_body += 1
            continue
        payloads.append(timeline.task_payload(task, found, intervals.get(task.video_id, ()),
                                              privacy=privacy.get(task.video_id, ())))
    if report.tasks_withheld:
        log.info("%d tasks wait for their videos to be cleared for people (privacy)",
                 report.tasks_withheld)
    if not payloads:
        return
    client.import_tasks(project, payloads)
    report.tasks_sent += len(payloads)
    newest = Counter(f"{t.model.name}@{t.model.version}" for t in todo).most_common(1)[0][0]
    client.set_model_version(project, newest)


def _close(settings: Settings, client: LabelStudio, ledger: ReturnLedger, tasks: list[dict],
           held: dict, report: SyncReport) -> None:
    todo = [(t, held[t["task_id"]]) for t in tasks
            if t["status"] == "closed" and t["task_id"] in held
            and not held[t["task_id"]].get("annotations")]
    if not todo:
        return
    store = DatasetStore(settings.home)
    intervals = store.find_intervals(todo[0][0]["procedure"],
                                     sorted({t["video_id"] for t, _ in todo}))
    for t, ls in todo:
        lo, hi = t["start_frame"], t["end_frame"]
        covering = [(max(iv.start_frame, lo), min(iv.end_frame, hi), iv.label)
                    for iv in intervals.get(t["video_id"], ())
                    if iv.provenance == "human" and iv.end_frame > lo and iv.start_frame < hi]
        ledger.mark_closed(int(ls["id"]))
        client.update_task_data(ls, fix=CLOSED_NOTE.format(by=t["completed_by"]))
        client.annotate(int(ls["id"]), timeline.ls_result(covering, timeline.media_of(ls["data"])))
        report.tasks_closed += 1


def _renew(client: LabelStudio, links: MediaLinks, tasks: Iterable[dict], held: dict,
           report: SyncReport, now: datetime) -> None:
    """Open tasks whose media link expires soon get a fresh one."""
    for t in tasks:
        ls = held.get(t["task_id"])
        if t["status"] != "open" or ls is None:
            continue
        fresh = links.renewed(str(ls["data"].get("video", "")), now)
        if fresh is not None:
            client.update_task_data(ls, video=fresh)
            report.links_renewed += 1


def report_dead_letters(client: LabelStudio, ledger: ReturnLedger,
                        dead: Iterable[tuple[bytes | None, str]], report: SyncReport) -> None:
    """Write the reason of each dead-lettered Label Studio event onto its task, once."""
    for value, reason in dead:
        try:
            event_id = json.loads(value or b"{}").get("event_id", "")
        except (ValueError, AttributeError):
            continue
        origin = ledger.origin(event_id) if isinstance(event_id, str) else None
        if origin is None or ledger.reported(event_id):
            continue
        task = client.call("GET", f"/api/tasks/{origin['task']}")
        client.update_task_data(task, fix=f"Not accepted, please correct and submit again: "
                                          f"{reason}")
        ledger.report(event_id, reason)
        report.problems_reported += 1


def dead_letters(settings: Settings) -> list[tuple[bytes | None, str]]:
    """Every dead letter's original value and reason."""
    from surgflow.feedback import broker, dlq

    out = []
    for r in dlq.read_records(broker.bootstrap(settings), settings.topic("dlq")):
        headers = {k: v for k, v in (r.headers or [])}
        reason = headers.get("surgflow.error", b"").decode("utf-8", "replace")
        out.append((r.value, reason))
    return out


def run_sync(settings: Settings) -> SyncReport:
    """One pass against the configured (or embedded) Label Studio, on the configured broker.

    Passes on one home run one at a time (the deployment's interval and its version trigger
    may start two at once): both would find a task missing and import it twice."""
    from surgflow.annotation.links import links_for
    from surgflow.annotation.server import endpoint
    from surgflow.feedback.client import Publisher
    from surgflow.serving.screening import privacy_policy

    lock = ReturnLedger(settings.home).root / ".sync.lock"
    with locked(lock), LabelStudio(endpoint(settings)) as client, \
            Publisher.from_settings(settings) as pub:
        report = sync(settings, client, pub, links_for(settings), privacy_policy(settings))
        report_dead_letters(client, ReturnLedger(settings.home), dead_letters(settings), report)
    return report
