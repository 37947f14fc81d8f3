"""The privacy screening flow: the production out-of-body detector over every new video.

Thin over :func:`surgflow.serving.screening.screen`. Its deployment runs on every new dataset
version (a video joins its procedure's dataset in the batch that registers it) and on an
interval, which also screens every video again once a new detector reaches production. A pass
is idempotent: a video screened by the production detector is not screened again, so
overlapping runs or a rerun after a crash do no harm. Its own writes (privacy-track versions)
announce no version, so they never start it again; a pass that screened videos announces
``surgflow.privacy.screened``, on which the annotation sync sends their waiting tasks.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from surgflow.config import get_settings

SCREEN_EVERY_S = 30
#: announced when a pass cleared videos for people: the annotation sync sends their tasks
SCREENED_EVENT = "surgflow.privacy.screened"
RESOURCE = "surgflow.privacy"


@task(name="screen-videos", retries=1, retry_delay_seconds=5)
def screen_videos() -> dict:
    from surgflow.serving.screening import screen

    return screen(get_settings()).as_json()


@flow(name="privacy-screen")
def privacy_screen(dataset: str | None = None, version: int | None = None) -> dict:
    """One screening pass (``dataset``/``version``: the version event that started it)."""
    report = screen_videos()
    if report["screened"]:
        emit_event(event=SCREENED_EVENT, resource={"prefect.resource.id": RESOURCE},
                   payload={"detector": report["detector"], "videos": report["screened"]})
    get_run_logger().info("privacy screening%s: %d screened, %d failed, %.0f s out of the body",
                          f" after {dataset} v{version}" if dataset else "",
                          len(report["screened"]), len(report["failed"]),
                          report["out_of_body_s"])
    return report
