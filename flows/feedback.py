"""The feedback flow: Kafka input topics -> dataset versions -> Prefect events (SPEC §1).

Thin over :mod:`surgflow.feedback`: one task merges (a ``--once`` pass, or follow mode for a
while) and announces each new version as the Prefect event ``surgflow.dataset.version.created``
on resource ``surgflow.dataset.<name>``, which training deployments trigger on: the library
takes the announcement as a callback (:func:`emit_version_event`, which ``surgflow feedback run``
passes too). Only broker errors are retried; bad messages never fail the flow (they go to
the DLQ).
"""

from __future__ import annotations

import threading

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from surgflow.config import get_settings
from surgflow.errors import BrokerError
from surgflow.feedback.consumer import FOLLOW_MAX_EVENTS, FOLLOW_MAX_SECONDS, run_feedback
from surgflow.feedback.events import EVENT, payload, resource_id
from surgflow.serving.screening import privacy_hold
from surgflow_flows.retries import transient


def emit_version_event(version: dict) -> None:
    """The feedback run's ``on_version`` callback: the Prefect event for one new version.

    Inside a flow run Prefect delivers it when the run ends; a process that exits right after
    (the CLI) drains Prefect's events worker first."""
    emit_event(event=EVENT, resource={"prefect.resource.id": resource_id(version["dataset"]),
                                      "prefect.resource.name": version["dataset"]},
               payload=payload(version))


@task(name="merge-feedback", retries=2, retry_delay_seconds=5,
      retry_condition_fn=transient(BrokerError))
def merge_feedback(once: bool = True, max_events: int = FOLLOW_MAX_EVENTS,
                   max_seconds: float = FOLLOW_MAX_SECONDS,
                   follow_for_s: float | None = None) -> dict:
    """Consume and merge, announcing each batch's new versions; returns the run report."""
    stop = threading.Event()
    if follow_for_s is not None:
        timer = threading.Timer(follow_for_s, stop.set)
        timer.daemon = True
        timer.start()
    settings = get_settings()
    report = run_feedback(
        settings, once=once, max_events=max_events, max_seconds=max_seconds, stop=stop,
        on_version=emit_version_event, hold=privacy_hold(settings))
    return report.as_json()


@flow(name="feedback")
def feedback_flow(once: bool = True, max_events: int = FOLLOW_MAX_EVENTS,
                  max_seconds: float = FOLLOW_MAX_SECONDS,
                  follow_for_s: float | None = None) -> dict:
    """Merge the feedback topics into new dataset versions and announce them."""
    report = merge_feedback(once, max_events, max_seconds, follow_for_s)
    get_run_logger().info("feedback: %s", report)
    return report


if __name__ == "__main__":
    feedback_flow()
