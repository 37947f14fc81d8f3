"""`surgflow data versions|show|query|diff|gc`: SPEC §6 JSON and exit codes, run as a user would."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from surgflow.data.labels import LabelEvent, LabelSegment
from surgflow.data.registry import VideoRecord
from surgflow.data.versions import DatasetStore
from tests.cli_helpers import cli_error, run_cli

DS = "cholecystectomy"
T0 = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def rec(i: int) -> VideoRecord:
    return VideoRecord(
        video_id=f"case-{i:04d}", uri=f"/v/{i}.mp4", path=f"/v/{i}.mp4", sha256=f"{i:064x}",
        size_bytes=1, procedure=DS, source="hospital-a", recorded_at=None, num_frames=500,
        fps=25.0, width=224, height=224, duration_s=20.0, registered_at=T0,
    )


@pytest.fixture
def two_versions(surgflow_home: Path) -> DatasetStore:
    store = DatasetStore(surgflow_home)
    seg = LabelSegment(0, 300, "Preparation", 0.7)
    store.commit(DS, videos=[rec(1), rec(2)], offsets={"surgflow.inference:0": 1},
                 events=[LabelEvent("e-1", "case-0001", "model", T0, 0, 0, (seg,))])
    store.commit(DS, videos=[rec(3)], offsets={"surgflow.annotations:1": 1}, parked_events=2,
                 events=[LabelEvent("e-2", "case-0001", "human", T0, 1, 0,
                                    (LabelSegment(100, 200, "ClippingCutting"),))])
    return store


def test_versions_and_show(two_versions):
    versions = run_cli("data", "versions", DS, json=True).data
    assert [set(v) for v in versions] == [
        {"version", "parent", "created_at", "events_applied", "videos"}] * 2
    assert [(v["version"], v["parent"], v["events_applied"], v["videos"]) for v in versions] \
        == [(1, None, 1, 2), (2, 1, 2, 3)]
    latest = run_cli("data", "show", DS, json=True).data
    assert latest == run_cli("data", "show", f"{DS}@2", json=True).data
    assert latest["version"] == 2 and latest["parent"] == 1 and latest["parked_events"] == 2
    assert latest["label_frames"] == {"ClippingCutting": 100, "Preparation": 200}
    assert latest["provenance_frames"] == {"human": 100, "model": 200}
    assert latest["sources"] == {"hospital-a": 3}
    assert sum(latest["splits"].values()) == 3 and len(latest["fingerprint"]) == 64
    first = run_cli("data", "show", f"{DS}@1", json=True).data
    assert first["version"] == 1 and first["fingerprint"] != latest["fingerprint"]


def test_unknown_dataset_or_version_exits_2(two_versions):
    assert "no version yet" in cli_error(2, "data", "show", "appendectomy")
    assert "no version yet" in cli_error(2, "data", "versions", "appendectomy")
    assert "no version 9" in cli_error(2, "data", "show", f"{DS}@9")
    assert "DATASET@VERSION" in cli_error(2, "data", "show", f"{DS}@latest")
    assert "DATASET@VERSION" in cli_error(2, "data", "show", f"{DS}@01")  # as recipes refuse it


def test_query_returns_rows_and_rejects_writes(two_versions):
    rows = run_cli("data", "query", "SELECT video_id, start_frame, end_frame, label, provenance,"
                   " confidence FROM segments ORDER BY start_frame", json=True).data
    assert rows == [
        {"video_id": "case-0001", "start_frame": 0, "end_frame": 100, "label": "Preparation",
         "provenance": "model", "confidence": 0.7},
        {"video_id": "case-0001", "start_frame": 100, "end_frame": 200,
         "label": "ClippingCutting", "provenance": "human", "confidence": None},
        {"video_id": "case-0001", "start_frame": 200, "end_frame": 300, "label": "Preparation",
         "provenance": "model", "confidence": 0.7},
    ]
    assert "read-only" in cli_error(2, "data", "query", "DELETE FROM segments")
    assert "query failed" in cli_error(2, "data", "query", "SELECT * FROM nowhere")


def test_diff_and_gc(two_versions):
    d = run_cli("data", "diff", f"{DS}@1", f"{DS}@2", json=True).data
    assert d["videos_added"] == ["case-0003"] and d["frames_relabelled"] == 100
    assert d["frames_added"] == 0 and not d["same_content"]
    orphan = two_versions.root / DS / "data" / ("0" * 64 + ".parquet")
    orphan.write_bytes(b"left by a crashed commit")
    kept = run_cli("data", "gc", json=True).data
    assert kept["removed_files"] == 0 and orphan.exists()
    report = run_cli("data", "gc", "--grace-seconds", "0", json=True).data
    assert f"{DS}/data/{orphan.name}" in report["removed"] and not orphan.exists()
    assert not (two_versions.root / DS / "cache").exists()  # diff and show build nothing
    assert report["removed_files"] == 1
    assert run_cli("data", "show", DS, json=True).data["version"] == 2


def test_gc_grace_default_is_the_stores():
    # the command line names the default without importing the store at start-up
    from surgflow.cli.datasets import GC_GRACE_S
    from surgflow.data.versions import DEFAULT_GC_GRACE_S

    assert GC_GRACE_S == DEFAULT_GC_GRACE_S
