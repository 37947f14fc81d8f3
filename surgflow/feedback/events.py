"""Prefect events for new dataset versions, which training triggers listen to.

Event ``surgflow.dataset.version.created`` on resource ``surgflow.dataset.<name>`` with payload
version, parent, videos, labelled frames and new sources. Events go to the Prefect API named by
``PREFECT_API_URL``; without one (or when Prefect cannot be reached) nothing is sent and the
feedback run is unaffected, since the dataset version is already durable.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

EVENT = "surgflow.dataset.version.created"


def resource_id(dataset: str) -> str:
    return f"surgflow.dataset.{dataset}"


def payload(version: dict) -> dict:
    return {
        "dataset": version["dataset"], "version": version["version"],
        "parent": version["parent"], "videos": version["videos"],
        "labelled_frames": version["labelled_frames"], "new_sources": version["new_sources"],
        "fingerprint": version.get("fingerprint"),
    }


def emit_version_events(versions: list[dict], *, require_api: bool = True,
                        drain: bool = False) -> int:
    """Emit one event per new version; return how many were emitted.

    ``drain`` waits until the events are delivered (for a process that exits right after, such
    as the CLI; inside a flow run Prefect delivers them when the run ends).
    """
    if not versions or (require_api and not os.environ.get("PREFECT_API_URL")):
        return 0
    from prefect.events import emit_event

    sent = 0
    for v in versions:
        try:
            event = emit_event(event=EVENT, resource={
                "prefect.resource.id": resource_id(v["dataset"]),
                "prefect.resource.name": v["dataset"],
            }, payload=payload(v))
        except Exception as e:  # events are advisory; the version is already durable
            log.warning("could not emit %s for %s@%s: %s", EVENT, v["dataset"], v["version"], e)
            continue
        sent += event is not None
    if drain and sent:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)
    return sent
