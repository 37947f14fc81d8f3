"""The annotation sync flow: feedback tasks out to Label Studio, corrections back to Kafka.

Thin over :func:`surgflow.annotation.sync.run_sync`. Its deployment runs on every new dataset
version (every feedback task is raised in the batch of a new version, and a version of new
human labels may close tasks) and on an interval, the safe path for annotations whose webhook
was missed. A pass is idempotent, so overlapping runs or a rerun after a crash do no harm.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from surgflow.annotation.labelstudio import LabelStudioError
from surgflow.config import get_settings
from surgflow.errors import BrokerError
from surgflow_flows.retries import transient

SYNC_EVERY_S = 60


@task(name="sync-label-studio", retries=2, retry_delay_seconds=10,
      retry_condition_fn=transient(BrokerError, LabelStudioError))
def sync_label_studio() -> dict:
    from surgflow.annotation.sync import run_sync

    return run_sync(get_settings()).as_json()


@flow(name="annotation-sync")
def annotation_sync(dataset: str | None = None, version: int | None = None) -> dict:
    """One sync pass (``dataset``/``version``: the version event that started it, if any)."""
    report = sync_label_studio()
    get_run_logger().info("annotation sync%s: %s",
                          f" after {dataset} v{version}" if dataset else "", report)
    return report
