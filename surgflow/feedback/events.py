"""The announcement of a new dataset version, which training triggers listen to.

Event ``surgflow.dataset.version.created`` on resource ``surgflow.dataset.<name>`` with payload
version, parent, videos, labelled frames, new sources and fingerprint. The library knows the
event's name and shape but sends nothing: the feedback run takes an ``on_version`` callback
(:func:`~surgflow.feedback.consumer.run_feedback`), called once per new version after the
version is durable, and the feedback flow and ``surgflow feedback run`` pass one that emits the
Prefect event. Announcing is advisory: a callback that fails is logged and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable

EVENT = "surgflow.dataset.version.created"

#: called with one entry of :attr:`~surgflow.feedback.merge.RunReport.versions` per new version
VersionCallback = Callable[[dict], None]
#: which of these videos may not be shown to people yet, each with the reason
HoldRule = Callable[[list[str]], dict[str, str]]


def resource_id(dataset: str) -> str:
    return f"surgflow.dataset.{dataset}"


def payload(version: dict) -> dict:
    """The event's payload for one new version (a :data:`VersionCallback` argument)."""
    return {
        "dataset": version["dataset"], "version": version["version"],
        "parent": version["parent"], "videos": version["videos"],
        "labelled_frames": version["labelled_frames"], "new_sources": version["new_sources"],
        "fingerprint": version.get("fingerprint"),
    }
