"""The Prefect feedback flow on a real Prefect server: merges, then announces each version."""

from __future__ import annotations

import time

import httpx
import pytest

from surgflow.config import get_settings
from surgflow.data.versions import DatasetStore
from surgflow.feedback.client import Publisher
from surgflow.feedback.events import EVENT, resource_id
from tests.cli_helpers import run_cli
from tests.feedback_helpers import inference_event, video_event

pytestmark = pytest.mark.integration


def _version_events(api_url: str, fingerprint: str, timeout_s: float = 30.0) -> list[dict]:
    body = {"filter": {"event": {"name": [EVENT]},
                       "any_resource": {"id": [resource_id("cholecystectomy")]}},
            "limit": 50}
    deadline = time.monotonic() + timeout_s
    while True:
        page = httpx.post(f"{api_url}/events/filter", json=body, timeout=10).json()
        found = [e for e in page["events"] if e["payload"].get("fingerprint") == fingerprint]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_flow_merges_and_emits_version_created(prefect_server, kafka, synthetic_corpus):
    from surgflow_flows.feedback import feedback_flow

    first, second = synthetic_corpus[:2], synthetic_corpus[2:4]
    with Publisher.from_settings(get_settings()) as pub:
        for i, v in enumerate(first):
            pub.video(video_event(v))
            pub.inference(inference_event(v, f"inf-{i}", i))
        pub.flush()

    report = feedback_flow(once=True)
    assert report["versions_created"] == [{"dataset": "cholecystectomy", "version": 1}]
    assert report["applied"] == 4
    m1 = DatasetStore(kafka.home).manifest("cholecystectomy")
    [event] = _version_events(prefect_server, m1.fingerprint)
    assert event["resource"]["prefect.resource.id"] == "surgflow.dataset.cholecystectomy"
    assert event["payload"]["version"] == 1 and event["payload"]["parent"] is None
    assert event["payload"]["videos"] == 2
    assert event["payload"]["labelled_frames"] == sum(v.num_frames for v in first)
    assert event["payload"]["new_sources"] == sorted({v.hospital for v in first})

    # the CLI announces too (PREFECT_API_URL is set by the server fixture)
    with Publisher.from_settings(get_settings()) as pub:
        for v in second:
            pub.video(video_event(v))
        pub.flush()
    out = run_cli("feedback", "run", "--once", json=True).data
    assert out["versions_created"] == [{"dataset": "cholecystectomy", "version": 2}]
    m2 = DatasetStore(kafka.home).manifest("cholecystectomy")
    [event2] = _version_events(prefect_server, m2.fingerprint)
    assert event2["payload"]["version"] == 2 and event2["payload"]["parent"] == 1
    assert event2["payload"]["new_sources"] == sorted(
        {v.hospital for v in second} - {v.hospital for v in first})


def test_flow_in_follow_mode_announces_each_batch(prefect_server, kafka, synthetic_corpus,
                                                  monkeypatch):
    from surgflow_flows.feedback import feedback_flow

    monkeypatch.setenv("SURGFLOW_KAFKA_SESSION_TIMEOUT_MS", "3000")
    v = synthetic_corpus[4]
    with Publisher.from_settings(get_settings()) as pub:
        pub.video(video_event(v))
        pub.inference(inference_event(v, "inf-f", 1))
        pub.flush()
    report = feedback_flow(once=False, max_seconds=0.3, follow_for_s=6.0)
    assert report["versions_created"] == [{"dataset": "cholecystectomy", "version": 1}]
    assert report["applied"] == 2
    m = DatasetStore(kafka.home).manifest("cholecystectomy")
    [event] = _version_events(prefect_server, m.fingerprint)
    assert event["payload"]["videos"] == 1 and event["payload"]["version"] == 1
